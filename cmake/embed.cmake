# SPDX-License-Identifier: Apache-2.0
# Writes a file's bytes as a C array, NUL-terminated, so that the library
# carries text it needs at run time (the PTX of src/cuda/kernels) without
# a compiler for it at build time. Script mode:
#   cmake -DIN=file -DOUT=file.c -DNAME=symbol -P embed.cmake
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" n)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)"
       "\\1\n    " bytes "${bytes}")
get_filename_component(base "${IN}" NAME)
file(WRITE "${OUT}.tmp"
  "/* SPDX-License-Identifier: Apache-2.0 */\n"
  "/* Generated from ${base} by cmake/embed.cmake at build time. */\n"
  "extern const char ${NAME}[];\n"
  "const char ${NAME}[] = {\n    ${bytes}0x00};\n")
# Only a changed array recompiles.
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different "${OUT}.tmp" "${OUT}")
file(REMOVE "${OUT}.tmp")
