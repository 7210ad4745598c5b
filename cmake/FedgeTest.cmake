# fedge_add_test(NAME name SOURCES a.cpp b.cpp LIBS libs... LABELS unit|integration|e2e
#                [TIMEOUT seconds])
# Builds one GoogleTest executable and registers it with ctest under the given labels.
function(fedge_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  if(NOT FEDGE_BUILD_TESTS)
    return()
  endif()
  if(NOT T_LABELS)
    set(T_LABELS unit)
  endif()
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest GTest::gmock GTest::gtest_main
                        fedge_warnings)
  add_test(NAME ${T_NAME} COMMAND ${T_NAME})
  set_tests_properties(${T_NAME} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT}
    ENVIRONMENT "FEDGE_SOURCE_DIR=${CMAKE_SOURCE_DIR};FEDGE_BINARY_DIR=${CMAKE_BINARY_DIR}")
endfunction()
