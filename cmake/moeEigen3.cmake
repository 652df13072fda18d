# Which Eigen moe accepts: 3.4 or newer, 5.x included. Included by the top-level CMakeLists.txt
# and, installed beside it, by moeConfig.cmake, so the project and its package check alike.
#
# The headers use packet operations Eigen 3.4 introduced (pselect, pcmp_lt_or_nan, predux_any):
# 3.3 does not compile them. After 3.4 Eigen's next major version is 5. Its package cannot be
# asked for "3.4 or newer": Eigen3ConfigVersion.cmake is CMake's SameMajorVersion file, so
# find_package(Eigen3 3.4) rejects 5.x, and a range (3.4...5, 3.4...<6) is rejected by 3.4 and
# 5.x alike because both ends of a range must have the installed major version. So Eigen is found
# without a version and the version it reports is compared here.

# Sets `out_var` to an empty string when the Eigen3 package found last is Eigen 3.4 or newer, else
# to a message that names the version required and the version (and place) found.
function(moe_eigen3_version_problem out_var)
  set(minimum 3.4)
  # Eigen3_VERSION comes from the package's version file; EIGEN3_VERSION_STRING is the legacy
  # variable Eigen3Config.cmake sets in Eigen 3.x, for a package installed without a version file.
  if(NOT "${Eigen3_VERSION}" STREQUAL "")
    set(version "${Eigen3_VERSION}")
  elseif(NOT "${EIGEN3_VERSION_STRING}" STREQUAL "")
    set(version "${EIGEN3_VERSION_STRING}")
  else()
    set(${out_var} "moe needs Eigen >= ${minimum}, found an Eigen3 package that reports no \
version (neither Eigen3_VERSION nor EIGEN3_VERSION_STRING is set) in ${Eigen3_DIR}" PARENT_SCOPE)
    return()
  endif()
  if(version VERSION_LESS minimum)
    set(${out_var} "moe needs Eigen >= ${minimum}, found Eigen ${version} in ${Eigen3_DIR}. \
Install Eigen 3.4 or newer (5.x works) and point Eigen3_DIR (or CMAKE_PREFIX_PATH) at it."
      PARENT_SCOPE)
  else()
    set(${out_var} "" PARENT_SCOPE)
  endif()
endfunction()
