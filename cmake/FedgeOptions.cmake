# Warnings and sanitizers for fedge's own targets (not for third-party code).
add_library(fedge_warnings INTERFACE)
target_compile_options(fedge_warnings INTERFACE -Wall -Wextra -Wno-unused-parameter)

if(FEDGE_SANITIZE)
  add_compile_options(-fsanitize=${FEDGE_SANITIZE} -fno-omit-frame-pointer)
  add_link_options(-fsanitize=${FEDGE_SANITIZE})
endif()

# Version string baked into every binary's --version.
execute_process(COMMAND git describe --always --dirty
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR} OUTPUT_VARIABLE FEDGE_GIT_REV
  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT FEDGE_GIT_REV)
  set(FEDGE_GIT_REV unknown)
endif()

# A compiler cache, when installed (scripts/install-deps.sh installs ccache): rebuilds
# after a branch switch or in a second build directory reuse objects. The torch-heavy
# agent translation units take 15-20 s each on the project's 2-core machines.
find_program(FEDGE_CCACHE ccache)
if(FEDGE_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_C_COMPILER_LAUNCHER ${FEDGE_CCACHE})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${FEDGE_CCACHE})
endif()
