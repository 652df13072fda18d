# Builds and runs small projects that consume moe the way a user would; tests/CMakeLists.txt adds
# one ctest entry per MODE:
#   install           configure this source tree against a stand-in Eigen 5.0.1 package, with
#                     MOE_WITH_OPENMP as EXPECT_OPENMP, and install it into PREFIX, the fixture the
#                     find_package and pkg_config modes share; the license, docs and moe.pc must be
#                     there
#   find_package      find_package(moe <VERSION> CONFIG REQUIRED) from PREFIX over the real Eigen,
#                     consumer.cpp (the umbrella header); moe::version() must be moe_VERSION. With
#                     EXPECT_OPENMP it asks for COMPONENTS openmp and links moe::openmp, which must
#                     thread the program; with OpenMP hidden that configuration must fail, saying
#                     why
#   eigen5            find_package from PREFIX with Eigen3_DIR at the Eigen 5.0.1 stand-in,
#                     topk_consumer.cpp (one header, the one that needs Eigen 3.4), linking moe::moe,
#                     which must not carry OpenMP, even when the package was installed with it
#   pkg_config        topk_consumer.cpp compiled by hand with `PKG_CONFIG --cflags --libs moe` from
#                     PREFIX; moe::version() must be `PKG_CONFIG --modversion moe`
#   eigen3.3          with an Eigen 3.3.9 stand-in, this source tree and a find_package consumer
#                     must both refuse to configure, saying so
#   parallel          find_package(moe CONFIG REQUIRED COMPONENTS parallel), parallel_consumer.cpp
#                     run under MPIEXEC with 2 processes; with MPI hidden the same configuration
#                     must fail, saying why
#   compiled          find_package(moe CONFIG REQUIRED COMPONENTS compiled) from PREFIX,
#                     layer_consumer.cpp linked with moe::compiled (built from the installed
#                     source) must give the hand-worked answer; the same program with the
#                     component's definition but without its library must fail to link
#   add_subdirectory  add_subdirectory() of this source tree, topk_consumer.cpp; with MPI,
#                     parallel_consumer.cpp is built too (not run). The parent's `cmake --install`
#                     must install the parent's program and nothing of moe (MOE_INSTALL is off)
# Variables: MODE, SOURCE_DIR, WORK_DIR, PREFIX, VERSION (this project's), CXX_COMPILER, GENERATOR,
# EIGEN3_INCLUDE_DIRS (the real Eigen headers, for the stand-ins), EXPECT_PARALLEL (MPI is
# installed, so moe::parallel must exist without asking), EXPECT_OPENMP (the same of OpenMP and
# moe::openmp), MPIEXEC and MPIEXEC_NUMPROC_FLAG (parallel), PKG_CONFIG (pkg_config: the program,
# false when none was found). Lists arrive '|'-separated: a ';' would split the ctest command line.
cmake_minimum_required(VERSION 3.21)

# Runs a command; on failure stops with the command line and its output.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " command "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${command}\n${out}")
  endif()
  message("${out}")
endfunction()

# Runs a command that must fail with `expected` in its output (compared with every run of
# whitespace made one space: CMake wraps the lines of its messages).
function(run_expecting_failure expected)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  string(REPLACE ";" " " command "${ARGN}")
  string(REGEX REPLACE "[ \t\r\n]+" " " flat_out "${out}")
  string(FIND "${flat_out}" "${expected}" at)
  if(rc EQUAL 0)
    message(FATAL_ERROR "expected to fail with '${expected}', succeeded: ${command}\n${out}")
  elseif(at EQUAL -1)
    message(FATAL_ERROR "expected the output to contain '${expected}', got (exit ${rc}) from "
      "${command}:\n${out}")
  endif()
  message("failed as expected, with '${expected}': ${command}")
endfunction()

# Writes a stand-in for an installed Eigen `version` package into `dir`: Eigen3Config.cmake, whose
# Eigen3::Eigen has the real headers, and the version file Eigen installs, CMake's SameMajorVersion
# one (a request for 3.4 rejects 5.x).
function(write_eigen3_stand_in dir version)
  include(CMakePackageConfigHelpers)
  set(FAKE_EIGEN3_VERSION ${version})
  string(REPLACE "|" ";" FAKE_EIGEN3_INCLUDE_DIR "${EIGEN3_INCLUDE_DIRS}")
  configure_file(${SOURCE_DIR}/tests/consumers/fake_eigen3/Eigen3Config.cmake.in
    ${dir}/Eigen3Config.cmake @ONLY)
  write_basic_package_version_file(${dir}/Eigen3ConfigVersion.cmake VERSION ${version}
    COMPATIBILITY SameMajorVersion ARCH_INDEPENDENT)
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
# Consumers build without optimization (an empty build type): they check how the package is
# consumed, not speed, and -O0 is the cheapest compilation of the headers.
set(common -G ${GENERATOR} -D CMAKE_CXX_COMPILER=${CXX_COMPILER} -D CMAKE_BUILD_TYPE=)
# This source tree configured as a user installing it: nothing built. MPI is hidden: the installed
# package looks for it when consumed, not when installed.
set(moe_configure ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/moe-build ${common}
  -D MOE_BUILD_TESTS=OFF -D MOE_BUILD_BENCH=OFF -D MOE_BUILD_EXAMPLES=OFF
  -D CMAKE_DISABLE_FIND_PACKAGE_MPI=ON -D CMAKE_INSTALL_PREFIX=${PREFIX})
set(from_prefix -D CMAKE_PREFIX_PATH=${PREFIX} -D EXPECT_PARALLEL=${EXPECT_PARALLEL}
  -D EXPECT_OPENMP=${EXPECT_OPENMP})
set(build ${WORK_DIR}/build)

if(MODE STREQUAL "install")
  write_eigen3_stand_in(${WORK_DIR}/eigen-5.0.1 5.0.1)
  file(REMOVE_RECURSE ${PREFIX})
  run(${moe_configure} -D Eigen3_DIR=${WORK_DIR}/eigen-5.0.1 -D MOE_WITH_OPENMP=${EXPECT_OPENMP})
  run(${CMAKE_COMMAND} --install ${WORK_DIR}/moe-build)
  foreach(file IN ITEMS share/doc/moe/LICENSE share/doc/moe/README.md share/doc/moe/CHANGELOG.md
      share/doc/moe/docs/layer.md share/pkgconfig/moe.pc)
    if(NOT EXISTS ${PREFIX}/${file})
      message(FATAL_ERROR "expected the install to write ${PREFIX}/${file}, found no such file")
    endif()
  endforeach()

elseif(MODE STREQUAL "find_package")
  set(find_package_consumer ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumers/find_package
    ${common} ${from_prefix} -D MOE_REQUESTED_VERSION=${VERSION} -D CONSUMER_SOURCE=consumer.cpp
    -D OPENMP_COMPONENT=${EXPECT_OPENMP})
  run(${find_package_consumer} -B ${build})
  run(${CMAKE_COMMAND} --build ${build})
  run(${build}/consumer)
  if(EXPECT_OPENMP)
    run_expecting_failure("component 'openmp' needs OpenMP for C++"
      ${find_package_consumer} -B ${WORK_DIR}/build-without-openmp
      -D CMAKE_DISABLE_FIND_PACKAGE_OpenMP=ON)
  endif()

elseif(MODE STREQUAL "eigen5")
  write_eigen3_stand_in(${WORK_DIR}/eigen-5.0.1 5.0.1)
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumers/find_package -B ${build} ${common}
    ${from_prefix} -D MOE_REQUESTED_VERSION=${VERSION} -D CONSUMER_SOURCE=topk_consumer.cpp
    -D Eigen3_DIR=${WORK_DIR}/eigen-5.0.1)
  run(${CMAKE_COMMAND} --build ${build})
  run(${build}/consumer)

elseif(MODE STREQUAL "pkg_config")
  if(NOT PKG_CONFIG)
    message(FATAL_ERROR "pkg-config not found when this build was configured: install it (Debian: "
      "pkgconf; scripts/deps.sh lists it) and configure again")
  endif()
  # Only the prefix's files: the user's own PKG_CONFIG_PATH could hold another moe.
  set(ENV{PKG_CONFIG_PATH} ${PREFIX}/share/pkgconfig)
  run(${PKG_CONFIG} --print-errors --exists "moe = ${VERSION}")
  execute_process(COMMAND ${PKG_CONFIG} --modversion moe OUTPUT_VARIABLE pc_version
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  execute_process(COMMAND ${PKG_CONFIG} --cflags --libs moe OUTPUT_VARIABLE pc_flags
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  message("pkg-config: moe ${pc_version}: ${pc_flags}")
  separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
  file(MAKE_DIRECTORY ${build})
  # -std=c++17 as a user must give it: moe.pc names no standard, and clang++ 14 defaults to C++14.
  run(${CXX_COMPILER} -std=c++17 ${pc_flags} -DMOE_EXPECTED_VERSION="${pc_version}"
    ${SOURCE_DIR}/tests/consumers/topk_consumer.cpp -o ${build}/consumer)
  run(${build}/consumer)

elseif(MODE STREQUAL "eigen3.3")
  write_eigen3_stand_in(${WORK_DIR}/eigen-3.3.9 3.3.9)
  set(expected "moe needs Eigen >= 3.4, found Eigen 3.3.9 in ${WORK_DIR}/eigen-3.3.9")
  run_expecting_failure("${expected}" ${moe_configure} -D Eigen3_DIR=${WORK_DIR}/eigen-3.3.9)
  run_expecting_failure("${expected}"
    ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumers/find_package -B ${build} ${common}
    ${from_prefix} -D MOE_REQUESTED_VERSION=${VERSION} -D Eigen3_DIR=${WORK_DIR}/eigen-3.3.9)

elseif(MODE STREQUAL "parallel")
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumers/parallel -B ${build} ${common}
    -D CMAKE_PREFIX_PATH=${PREFIX})
  run(${CMAKE_COMMAND} --build ${build})
  string(REPLACE "|" ";" mpiexec "${MPIEXEC}")
  run(${mpiexec} ${MPIEXEC_NUMPROC_FLAG} 2 ${build}/consumer)
  run_expecting_failure("component 'parallel' needs MPI with its C++ support"
    ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumers/parallel -B ${WORK_DIR}/build-without-mpi
    ${common} -D CMAKE_PREFIX_PATH=${PREFIX} -D CMAKE_DISABLE_FIND_PACKAGE_MPI=ON)

elseif(MODE STREQUAL "compiled")
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumers/compiled -B ${build} ${common}
    -D CMAKE_PREFIX_PATH=${PREFIX})
  run(${CMAKE_COMMAND} --build ${build})
  run(${build}/consumer)
  run_expecting_failure("undefined reference to"
    ${CMAKE_COMMAND} --build ${build} --target without_instantiations)

elseif(MODE STREQUAL "add_subdirectory")
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumers/add_subdirectory -B ${build} ${common}
    -D MOE_SOURCE_DIR=${SOURCE_DIR} -D EXPECT_PARALLEL=${EXPECT_PARALLEL}
    -D EXPECT_OPENMP=${EXPECT_OPENMP})
  run(${CMAKE_COMMAND} --build ${build})
  run(${build}/consumer)
  run(${CMAKE_COMMAND} --install ${build} --prefix ${WORK_DIR}/parent-prefix)
  file(GLOB_RECURSE installed RELATIVE ${WORK_DIR}/parent-prefix ${WORK_DIR}/parent-prefix/*)
  if(NOT installed STREQUAL "bin/consumer")
    string(REPLACE ";" ", " installed "${installed}")
    message(FATAL_ERROR "expected the parent project's install to write bin/consumer alone "
      "(moe's MOE_INSTALL is off under add_subdirectory), it wrote: ${installed}")
  endif()

else()
  message(FATAL_ERROR "MODE: expected install, find_package, eigen5, pkg_config, eigen3.3, parallel, "
    "compiled or add_subdirectory, got '${MODE}'")
endif()
