# Shared compile settings and small helpers, in the spirit of leveldb_test().

# Warnings for project code only; third-party headers come in as SYSTEM includes.
function(fedra_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wshadow)
  if(FEDRA_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

# fedra_add_library(NAME ALIAS SOURCES...): one shared library per top-level folder (shared, so
# that plugins and the host share one copy of every type and registry).
function(fedra_add_library name alias)
  add_library(${name} SHARED ${ARGN})
  add_library(${alias} ALIAS ${name})
  # "core/kit/strategy.h" from the tree (or PREFIX/include/fedra), "fedra/plugin.h" from include/.
  target_include_directories(${name} PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>
                                            $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
                                            $<INSTALL_INTERFACE:include/fedra> $<INSTALL_INTERFACE:include>)
  fedra_set_warnings(${name})
endfunction()

# fedra_add_test(NAME SOURCES... [LABELS l] [TIMEOUT s]): a doctest executable registered with CTest.
function(fedra_add_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE fedra_test_main ${ARG_LIBS})
  fedra_set_warnings(${name})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME ${name} COMMAND ${name} --no-intro=true)
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  set_tests_properties(${name} PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "${ARG_LABELS}")
endfunction()

# fedra_add_benchmark(NAME SOURCES... LIBS ...)
function(fedra_add_benchmark name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS})
  fedra_set_warnings(${name})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/benchmarks)
endfunction()
