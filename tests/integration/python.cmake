# The independent client: Debian's python3-grpcio and python3-protobuf call the
# orders binary, so the wire format is checked by an implementation that is
# not ours. Included from tests/integration/CMakeLists.txt.
#
# Debian's python3 (/usr/bin/python3) is preferred: python3-grpcio is
# installed for it, and a python3 found first on PATH (pyenv, a venv) may
# lack the grpc module.
if(TARGET choreo-orders)
  find_program(CHOREO_PYTHON3 NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
  if(NOT CHOREO_PYTHON3)
    find_program(CHOREO_PYTHON3 NAMES python3 REQUIRED)
  endif()
  find_program(NATS_SERVER_BIN nats-server PATHS /usr/sbin /usr/bin REQUIRED)
  execute_process(COMMAND ${CHOREO_PYTHON3} -c "import grpc, google.protobuf"
                  RESULT_VARIABLE choreo_py_ok OUTPUT_QUIET ERROR_QUIET)
  if(NOT choreo_py_ok EQUAL 0)
    message(WARNING "${CHOREO_PYTHON3} cannot import grpc and google.protobuf: "
                    "integration.python_client will fail (run: make deps)")
  endif()
  add_test(NAME integration.python_client
           COMMAND ${CHOREO_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/test_orders_python.py
                   --orders-bin $<TARGET_FILE:choreo-orders>
                   --nats-server ${NATS_SERVER_BIN}
                   --proto-dir ${CMAKE_SOURCE_DIR}/proto)
  set_tests_properties(integration.python_client PROPERTIES TIMEOUT 180 LABELS integration)
endif()
