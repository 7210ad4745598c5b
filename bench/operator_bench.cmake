# fedge_bench_operator: needs the operator libraries (absent with -DFEDGE_BUILD_OPERATOR=OFF).
if(TARGET fedge_op_controller)
  set(FEDGE_BENCH_LIBS fedge_op_controller fedge_op_testing fedge_op_kube)
else()
  set(FEDGE_BENCH_SKIP TRUE)
endif()
