# Builds and runs a small project that consumes moe::moe the way a user would.
#   MODE=find_package      install this project into a prefix, then find_package(moe CONFIG REQUIRED)
#   MODE=add_subdirectory  add_subdirectory() this source tree
cmake_minimum_required(VERSION 3.16)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " command "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${command}\n${out}")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
set(consumer ${SOURCE_DIR}/tests/consumers/${MODE})
set(common -G ${GENERATOR} -D CMAKE_CXX_COMPILER=${CXX_COMPILER} -D CMAKE_BUILD_TYPE=Release)

if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/moe-build ${common}
      -D MOE_BUILD_TESTS=OFF -D MOE_BUILD_BENCH=OFF -D MOE_BUILD_EXAMPLES=OFF
      -D CMAKE_INSTALL_PREFIX=${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} --install ${WORK_DIR}/moe-build)
  run(${CMAKE_COMMAND} -S ${consumer} -B ${WORK_DIR}/build ${common} -D CMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
else()
  run(${CMAKE_COMMAND} -S ${consumer} -B ${WORK_DIR}/build ${common} -D MOE_SOURCE_DIR=${SOURCE_DIR})
endif()
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/consumer)
