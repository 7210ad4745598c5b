# fedge_bench_http_server compares fedge's HTTP server with cpprestsdk's listener and,
# when Debian's libcpp-httplib-dev is installed (pkg-config cpp-httplib), cpp-httplib.
set(FEDGE_BENCH_LIBS cpprestsdk::cpprest)
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(CPP_HTTPLIB QUIET IMPORTED_TARGET cpp-httplib)
endif()
if(CPP_HTTPLIB_FOUND)
  set(FEDGE_BENCH_LIBS ${FEDGE_BENCH_LIBS} PkgConfig::CPP_HTTPLIB)
  add_compile_definitions(FEDGE_BENCH_HAVE_HTTPLIB=1)
endif()
