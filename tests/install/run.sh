#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The install test (CTest: test_install, label "install"), registered by
# cmake/install.cmake. It checks ferry from a user's side: installs a built
# tree into a fresh temporary prefix, checks the layout and the shared
# library's ELF surface (SONAME, versioned links, only ferry_* exported),
# that every public header of the source tree is installed and compiles on
# its own, then builds consumer.c (which includes only ferry.h) against the
# install twice, through pkg-config and through find_package(ferry), and
# runs both. The installed tools, ferry-info among them, must load the
# installed library without LD_LIBRARY_PATH through their run path, and
# ferry-info must report the version that pkg-config gives. A second,
# staged install (DESTDIR, prefix /usr) must leave the tools without a run
# path. Everything is removed at the end.
#
# Usage: run.sh BUILD_DIR LIBDIR INCLUDEDIR BINDIR VERSION ABI_MAJOR
#   LIBDIR, INCLUDEDIR, BINDIR are the relative CMAKE_INSTALL_* directories;
#   CC, when set, is the compiler for the consumers (CTest passes the
#   project's).
set -euo pipefail

if [ $# -ne 6 ]; then
    echo "usage: $0 BUILD_DIR LIBDIR INCLUDEDIR BINDIR VERSION ABI_MAJOR" >&2
    exit 2
fi
build=$1 libdir=$2 includedir=$3 bindir=$4 version=$5 abi=$6
here=$(cd "$(dirname "$0")" && pwd)
source_include=$(cd "$here/../../include" && pwd)
cc=${CC:-cc}

fail() {
    echo "test_install: FAIL: $*" >&2
    exit 1
}

step() {
    echo "test_install: $*"
}

# Runs a command with its output in a log that is shown only if it fails,
# so that a passing run stays short and a failing one explains itself.
logged() {
    local name=$1
    shift
    if ! "$@" >"$tmp/$name.log" 2>&1; then
        cat "$tmp/$name.log" >&2
        fail "$name: '$*' failed (output above)"
    fi
}

for dir in "$libdir" "$includedir" "$bindir"; do
    case $dir in
    /*) fail "install directory '$dir' is absolute; this test needs" \
        "directories relative to the prefix" ;;
    esac
done
for tool in cmake pkg-config readelf nm ldd "$cc"; do
    command -v "$tool" >/dev/null || fail "'$tool' is not installed (make deps)"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
lib=$prefix/$libdir
real=libferry.so.$version

step "installing $build into a temporary prefix ($prefix)"
logged install cmake --install "$build" --prefix "$prefix"

# --- Layout ------------------------------------------------------------
# Only the public headers, the shared library with its links, its
# pkg-config and CMake files, and the tools; no internal archive or header.
step "checking the installed files"
while IFS= read -r path; do
    case $path in
    "$includedir/ferry.h" | "$includedir"/ferry/*.h) ;;
    "$libdir"/libferry.so | "$libdir/libferry.so.$abi" | "$libdir/$real") ;;
    "$libdir/pkgconfig/ferry.pc") ;;
    "$libdir"/cmake/ferry/ferry*.cmake) ;;
    "$bindir"/ferry-*) ;;
    share/doc/ferry/LICENSE) ;;
    *) fail "unexpected file installed: $path" ;;
    esac
done < <(cd "$prefix" && find . ! -type d | sed 's|^\./||' | sort)
[ -f "$prefix/$includedir/ferry.h" ] || fail "include/ferry.h not installed"
cmp -s "$prefix/share/doc/ferry/LICENSE" "$here/../../LICENSE" ||
    fail "share/doc/ferry/LICENSE is not installed as the source's LICENSE"
# The umbrella includes its parts from ferry/, so a part left out of the
# install breaks every user; and a stray installed file is caught above.
(cd "$source_include" && find . -name '*.h' | sed 's|^\./||' | sort) >"$tmp/headers-src"
(cd "$prefix/$includedir" && find . -name '*.h' | sed 's|^\./||' | sort) >"$tmp/headers-inst"
diff -u "$tmp/headers-src" "$tmp/headers-inst" >"$tmp/headers.diff" ||
    fail "installed headers differ from include/ (- missing, + extra):" \
        "$(cat "$tmp/headers.diff")"
grep -q '^ferry/' "$tmp/headers-inst" || fail "no include/ferry/*.h installed"
if [ ! -f "$lib/$real" ] || [ -L "$lib/$real" ]; then
    fail "$libdir/$real is not installed as a regular file"
fi
[ "$(readlink "$lib/libferry.so.$abi" || true)" = "$real" ] ||
    fail "$libdir/libferry.so.$abi is not a link to $real"
[ "$(readlink "$lib/libferry.so" || true)" = "libferry.so.$abi" ] ||
    fail "$libdir/libferry.so is not a link to libferry.so.$abi"

# --- ELF surface ---------------------------------------------------------
step "checking SONAME and exported symbols"
soname=$(readelf -d "$lib/$real" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
[ "$soname" = "libferry.so.$abi" ] ||
    fail "SONAME is '$soname', expected libferry.so.$abi"
# Hidden visibility must keep internal ferry__ functions and anything linked
# in (UCX helpers, copies of libc functions) out of the ABI.
nm -D --defined-only "$lib/$real" | awk '{ print $NF }' | sort >"$tmp/symbols"
grep -q '^ferry_version$' "$tmp/symbols" ||
    fail "ferry_version is not exported; exported symbols: $(tr '\n' ' ' <"$tmp/symbols")"
bad=$(grep -v '^ferry_[^_]' "$tmp/symbols" | tr '\n' ' ' || true)
[ -z "$bad" ] || fail "symbols exported outside the public API: $bad"

# Which libferry a program loads: it must be the one just installed, not one
# from the system or the build tree.
check_loads_installed() {
    local program=$1 loaded
    loaded=$(ldd "$program" | awk '$1 == "libferry.so.'"$abi"'" { print $3 }')
    if [ -z "$loaded" ] || [ "$loaded" = "not" ]; then
        fail "$program does not find libferry.so.$abi"
    fi
    [ "$(realpath "$loaded")" = "$(realpath "$lib/$real")" ] ||
        fail "$program loads $loaded, not the installed $lib/$real"
}

# The tools carry a run path to the library, so they work from any prefix.
# ferry-info describes the library that programs load, so it must be one of
# them: linked to libferry.so, with no copy of the library's internals.
# ferry-bench is the one exception: its GPU buffers need a device chosen and
# filled through the CUDA driver, which only the library's internal loader
# reaches, so it links the library's objects (until the public API can
# allocate on a given device); it must still run from the prefix alone.
# A run path only where the library is outside the system's library path:
# in a prefix of one's own (this one, as under /opt) the tools need it,
# under /usr (a package, staged with DESTDIR) the dynamic linker finds the
# library and distributions refuse a run path.
runpath() {
    readelf -d "$1" | sed -n 's/.*Library r\(un\)*path: \[\(.*\)\].*/\2/p'
}
step "checking the tools' run paths (own prefix: one; staged /usr: none)"
for tool in "$prefix/$bindir"/ferry-*; do
    case $(runpath "$tool") in
    '$ORIGIN/'*) ;;
    *) fail "$tool, installed in its own prefix, has run path" \
        "'$(runpath "$tool")', not one relative to \$ORIGIN" ;;
    esac
done
stage=$tmp/stage
logged install-usr env DESTDIR="$stage" cmake --install "$build" --prefix /usr
staged=0
for tool in "$stage/usr/$bindir"/ferry-*; do
    [ -e "$tool" ] || fail "a staged install under /usr put no tool in /usr/$bindir"
    [ -z "$(runpath "$tool")" ] ||
        fail "$tool, staged for /usr, has run path '$(runpath "$tool")'"
    staged=$((staged + 1))
done
step "$staged tools staged for /usr carry no run path"

step "checking that installed tools find the library by themselves"
for tool in "$prefix/$bindir"/ferry-*; do
    [ -e "$tool" ] || continue
    if [ "$(basename "$tool")" = ferry-bench ]; then
        (unset LD_LIBRARY_PATH; "$tool" --help >/dev/null 2>&1) ||
            fail "installed ferry-bench does not start"
        continue
    fi
    (unset LD_LIBRARY_PATH; check_loads_installed "$tool")
done
info=$prefix/$bindir/ferry-info
[ -x "$info" ] || fail "ferry-info is not installed"
readelf -d "$info" | grep -q "NEEDED.*\[libferry\.so\.$abi\]" ||
    fail "ferry-info does not link libferry.so.$abi"
if nm "$info" 2>/dev/null | grep -q ' ferry__'; then
    fail "ferry-info carries internal ferry__ functions (a static copy of the library)"
fi
(unset LD_LIBRARY_PATH; "$info" >"$tmp/ferry-info.out" 2>&1) ||
    fail "installed ferry-info failed: $(cat "$tmp/ferry-info.out")"

# --- Headers ----------------------------------------------------------------
# Each part of the API compiles alone, in a user's strict C and C++ builds,
# so that a program may include just the part it needs.
step "compiling each installed header on its own"
while IFS= read -r header; do
    printf '#include <%s>\n' "$header" >"$tmp/one-header.c"
    logged "header-c-$(basename "$header")" "$cc" -std=c11 -Wall -Wextra \
        -Wpedantic -Werror -fsyntax-only -I"$prefix/$includedir" "$tmp/one-header.c"
    if command -v c++ >/dev/null; then
        logged "header-c++-$(basename "$header")" c++ -Wall -Wextra -Werror \
            -fsyntax-only -I"$prefix/$includedir" -x c++ "$tmp/one-header.c"
    fi
done <"$tmp/headers-inst"

export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# --- pkg-config ---------------------------------------------------------------
step "building the consumer with pkg-config"
export PKG_CONFIG_PATH="$lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
logged pkg-config-exists pkg-config --exists --print-errors ferry
pc_prefix=$(pkg-config --variable=prefix ferry)
[ "$pc_prefix" = "$prefix" ] ||
    fail "ferry.pc says prefix=$pc_prefix, the install went to $prefix"
pc_version=$(pkg-config --modversion ferry)
[ "$pc_version" = "$version" ] ||
    fail "ferry.pc says version $pc_version, expected $version"
info_version=$(sed -n '1s/^ferry //p' "$tmp/ferry-info.out")
[ "$info_version" = "$pc_version" ] ||
    fail "installed ferry-info reports version '$info_version', ferry.pc $pc_version"
pc_flags=$(pkg-config --cflags --libs ferry)
# pc_flags is split into words on purpose: it is a list of flags.
# shellcheck disable=SC2086
logged cc-pkg-config "$cc" -std=c11 -Wall -Wextra -Wpedantic -Werror \
    "$here/consumer.c" $pc_flags -o "$tmp/consumer-pc"
check_loads_installed "$tmp/consumer-pc"
logged run-pkg-config "$tmp/consumer-pc"

# --- CMake package ----------------------------------------------------------
step "building the consumer with find_package(ferry $version)"
logged cmake-configure cmake -S "$here" -B "$tmp/consumer-cmake" \
    -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$cc" \
    -DFERRY_WANT_VERSION="$version"
found=$(sed -n 's/^ferry_DIR:[A-Z]*=//p' "$tmp/consumer-cmake/CMakeCache.txt")
[ "$(realpath "$found")" = "$(realpath "$lib/cmake/ferry")" ] ||
    fail "find_package(ferry) found '$found', not the install in $prefix"
logged cmake-build cmake --build "$tmp/consumer-cmake"
check_loads_installed "$tmp/consumer-cmake/consumer"
logged run-cmake "$tmp/consumer-cmake/consumer"

# A different ABI major must be refused (SameMajorVersion), or a program
# could build against a library whose SONAME it cannot load.
step "checking that find_package(ferry $((abi + 1)).0) is refused"
if cmake -S "$here" -B "$tmp/consumer-next-major" \
    -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$cc" \
    -DFERRY_WANT_VERSION="$((abi + 1)).0" >"$tmp/next-major.log" 2>&1; then
    cat "$tmp/next-major.log" >&2
    fail "find_package(ferry $((abi + 1)).0) accepted version $version"
fi

step "all checks passed"
