# SPDX-License-Identifier: Apache-2.0
# Install rules, included at the end of the top-level CMakeLists.txt once
# every target exists. `cmake --install` lays out what a user of ferry needs:
#   include/ferry.h (and include/ferry/*.h)   the public headers only
#   lib/libferry.so.0.1.0, .so.0, .so          the shared library, SONAME .so.0
#   lib/pkgconfig/ferry.pc                     for `pkg-config ferry`
#   lib/cmake/ferry/                           for `find_package(ferry)`,
#                                              imported target ferry::ferry
#   bin/ferry-*                                the tools (tools/CMakeLists.txt)
#   share/doc/ferry/LICENSE                    the licence
# ferry_objects and ferry_internal are build-internal and never installed.
# test_install (tests/install/run.sh) installs into a temporary prefix and
# builds a consumer both ways, so these rules are checked by `make test`.

include(CMakePackageConfigHelpers)

set(FERRY_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/ferry")

# The licence goes with every install, in the runtime component a
# packager ships on its own.
install(FILES "${PROJECT_SOURCE_DIR}/LICENSE" DESTINATION "${CMAKE_INSTALL_DOCDIR}"
  COMPONENT Runtime)

# The library. The runtime pieces (the versioned file and its SONAME link)
# are kept apart from the development ones (the unversioned link, headers,
# pkg-config and CMake files) so that a packager can split them with
# `cmake --install --component`.
install(TARGETS ferry EXPORT ferryTargets
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
    COMPONENT Runtime NAMELINK_COMPONENT Development)

# include/ holds public headers only (private ones sit beside their sources):
# ferry.h, the umbrella, and the parts it includes from include/ferry/. The
# whole folder is installed, so a new part comes along by itself, and
# test_install checks that the installed set is exactly the source's.
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
  COMPONENT Development
  FILES_MATCHING PATTERN "*.h")

# The install directories as the install runs, for the steps below that
# run then: a relative one follows the prefix (${prefix} in pkg-config's
# file, CMAKE_INSTALL_PREFIX in the install script), an absolute one stays.
foreach(dir LIBDIR INCLUDEDIR BINDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${dir}}")
    set(ferry_pc_${dir} "${CMAKE_INSTALL_${dir}}")
    set(ferry_at_install_${dir} "${CMAKE_INSTALL_${dir}}")
  else()
    set(ferry_pc_${dir} "\${prefix}/${CMAKE_INSTALL_${dir}}")
    set(ferry_at_install_${dir} "\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_${dir}}")
  endif()
endforeach()

# Installed tools find the library through a run path relative to
# themselves, so an install under any prefix works without LD_LIBRARY_PATH.
# The tools are defined before this file is included, so the property is set
# on them here rather than through CMAKE_INSTALL_RPATH.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(ferry_tool_rpath "${CMAKE_INSTALL_LIBDIR}")
else()
  file(RELATIVE_PATH ferry_bin_to_lib
    "${CMAKE_INSTALL_FULL_BINDIR}" "${CMAKE_INSTALL_FULL_LIBDIR}")
  set(ferry_tool_rpath "$ORIGIN/${ferry_bin_to_lib}")
endif()
get_property(ferry_tool_targets DIRECTORY "${PROJECT_SOURCE_DIR}/tools"
  PROPERTY BUILDSYSTEM_TARGETS)
set(ferry_tools "")
foreach(tool IN LISTS ferry_tool_targets)
  get_target_property(tool_type ${tool} TYPE)
  if(tool_type STREQUAL "EXECUTABLE")
    set_target_properties(${tool} PROPERTIES INSTALL_RPATH "${ferry_tool_rpath}")
    list(APPEND ferry_tools ${tool})
  endif()
endforeach()

# Where the library lands in one of the system's library directories (a
# package's prefix /usr), the dynamic linker finds it by itself, and a run
# path there would only shadow the system's search order, which
# distributions forbid (Debian's lintian: custom-library-search-path). The
# prefix is only known when the install runs (`cmake --install --prefix`),
# so the run path is removed then, after the tools are installed (the tools'
# install rules come first: CMP0082). The system's directories are the
# linker's implicit ones, compared after resolving links (/lib is /usr/lib
# on a merged-/usr system).
set(ferry_system_libdirs "")
foreach(dir IN LISTS CMAKE_PLATFORM_IMPLICIT_LINK_DIRECTORIES
                     CMAKE_C_IMPLICIT_LINK_DIRECTORIES)
  get_filename_component(dir "${dir}" REALPATH)
  list(APPEND ferry_system_libdirs "${dir}")
endforeach()
install(CODE "
  set(ferry_system_libdirs [==[${ferry_system_libdirs}]==])
  get_filename_component(ferry_libdir \"${ferry_at_install_LIBDIR}\" REALPATH)
  list(FIND ferry_system_libdirs \"\${ferry_libdir}\" ferry_is_system)
  if(NOT ferry_is_system EQUAL -1)
    foreach(tool ${ferry_tools})
      set(tool \"\$ENV{DESTDIR}${ferry_at_install_BINDIR}/\${tool}\")
      if(EXISTS \"\${tool}\")
        message(STATUS \"Run path removed (\${ferry_libdir} is a system library directory): \${tool}\")
        file(RPATH_REMOVE FILE \"\${tool}\")
      endif()
    endforeach()
  endif()
")

# pkg-config file. Its prefix must be the one the install actually goes to,
# and `cmake --install --prefix P` changes CMAKE_INSTALL_PREFIX only when the
# install script runs, so the file is generated then, not at configure time.
# libdir and includedir stay relative to ${prefix} (see above); bracket
# arguments keep their ${...} literal for pkg-config.
install(CODE "
  set(FERRY_PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  set(FERRY_PC_LIBDIR [==[${ferry_pc_LIBDIR}]==])
  set(FERRY_PC_INCLUDEDIR [==[${ferry_pc_INCLUDEDIR}]==])
  set(FERRY_PC_VERSION \"${PROJECT_VERSION}\")
  configure_file(\"${PROJECT_SOURCE_DIR}/cmake/ferry.pc.in\"
                 \"${PROJECT_BINARY_DIR}/ferry.pc\" @ONLY)
" COMPONENT Development)
install(FILES "${PROJECT_BINARY_DIR}/ferry.pc"
  DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig"
  COMPONENT Development)

# CMake package. The export holds only the shared library: ferry_objects
# reaches it as object files, and UCX and threads are private link
# dependencies of a shared library, so none of them is in its link interface
# and the config file needs no find_dependency(). Paths in these files are
# relative to their own location, so they follow `--prefix` as they are.
install(EXPORT ferryTargets
  NAMESPACE ferry::
  FILE ferryTargets.cmake
  DESTINATION "${FERRY_CMAKE_DIR}"
  COMPONENT Development)
configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/ferryConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/ferryConfig.cmake"
  INSTALL_DESTINATION "${FERRY_CMAKE_DIR}")
# The ABI major is the SONAME, so any release with the same major satisfies
# a request for an earlier one.
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/ferryConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}"
  COMPATIBILITY SameMajorVersion)
install(FILES
  "${PROJECT_BINARY_DIR}/ferryConfig.cmake"
  "${PROJECT_BINARY_DIR}/ferryConfigVersion.cmake"
  DESTINATION "${FERRY_CMAKE_DIR}"
  COMPONENT Development)

# The install test checks the layout above from a user's side. It is left out
# of sanitizer builds: their libferry.so needs the sanitizer runtime loaded
# first, which a plain consumer program does not do, and the packaging under
# test is the same with or without sanitizers.
if(BUILD_TESTING AND NOT FERRY_SANITIZE)
  add_test(NAME test_install
    COMMAND bash "${PROJECT_SOURCE_DIR}/tests/install/run.sh"
            "${PROJECT_BINARY_DIR}" "${CMAKE_INSTALL_LIBDIR}"
            "${CMAKE_INSTALL_INCLUDEDIR}" "${CMAKE_INSTALL_BINDIR}"
            "${PROJECT_VERSION}"
            "${FERRY_ABI_MAJOR}")
  set_tests_properties(test_install PROPERTIES
    LABELS install
    TIMEOUT 300
    ENVIRONMENT "CC=${CMAKE_C_COMPILER}")
endif()
