# fedge_bench_memory needs the libtorch agent model (TextClassifier facade).
if(NOT TARGET fedge_agent_model)
  set(FEDGE_BENCH_SKIP TRUE)
endif()
set(FEDGE_BENCH_INCLUDES ${PROJECT_SOURCE_DIR}/agent/src/model)
set(FEDGE_BENCH_LIBS fedge_agent_model ${TORCH_LIBRARIES})
