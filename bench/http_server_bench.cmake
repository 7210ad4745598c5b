# fedge_bench_http_server compares fedge's HTTP server with cpprestsdk's listener and,
# when Debian's libcpp-httplib-dev is installed, cpp-httplib.
set(FEDGE_BENCH_LIBS cpprestsdk::cpprest)
if(EXISTS /usr/include/httplib.h)
  add_compile_definitions(FEDGE_BENCH_HAVE_HTTPLIB=1)
endif()
