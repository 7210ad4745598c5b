# fedge_bench_train_step needs the libtorch agent model (moved here from
# bench/CMakeLists.txt when that file became a glob; owner: model engineer).
if(NOT TARGET fedge_agent_model)
  set(FEDGE_BENCH_SKIP TRUE)
endif()
set(FEDGE_BENCH_INCLUDES ${PROJECT_SOURCE_DIR}/agent/src/model)
set(FEDGE_BENCH_LIBS fedge_agent_model ${TORCH_LIBRARIES})
