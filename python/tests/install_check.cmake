# ctest python_install: `cmake --install BUILD_DIR --component python --prefix PREFIX` writes the
# package under PREFIX/SITE, and PYTHON imports it from there (not from the build tree).
file(REMOVE_RECURSE ${PREFIX})
execute_process(
  COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --component python --prefix ${PREFIX}
  RESULT_VARIABLE status)
if(NOT status EQUAL 0)
  message(FATAL_ERROR "cmake --install --component python failed (${status})")
endif()
file(GLOB_RECURSE installed RELATIVE ${PREFIX} ${PREFIX}/*)
if(NOT installed MATCHES "${SITE}/moe_routing/__init__.py" OR NOT installed MATCHES "_core")
  message(FATAL_ERROR "expected ${SITE}/moe_routing/ with __init__.py and the extension, "
    "the install wrote: ${installed}")
endif()
set(ENV{PYTHONPATH} ${PREFIX}/${SITE})
set(check "import moe_routing, sys\n"
  "assert moe_routing.__file__.startswith(sys.argv[1]), moe_routing.__file__\n"
  "print(moe_routing.__version__, moe_routing.__file__)")
string(CONCAT check ${check})
# Run from the prefix: from the build tree, Python would import the package lying there.
execute_process(COMMAND ${PYTHON} -c "${check}" ${PREFIX}
  WORKING_DIRECTORY ${PREFIX} RESULT_VARIABLE status)
if(NOT status EQUAL 0)
  message(FATAL_ERROR "the installed package does not import from ${PREFIX}/${SITE}")
endif()
