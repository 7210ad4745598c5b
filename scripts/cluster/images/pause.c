/* The pod sandbox ("pause") process of fedge's test cluster, built with `gcc -static` by
 * scripts/cluster/build-nodes.sh and imported into each node's containerd as the CRI
 * sandbox_image, because the cluster has no registry to pull registry.k8s.io/pause from.
 *
 * Contract (that of Kubernetes' own pause): it holds the pod's namespaces open by
 * sleeping until SIGINT or SIGTERM, then exits 0; as PID 1 of a pod that shares its
 * process namespace it reaps every child that is re-parented to it (SIGCHLD).
 * `pause -v` prints its version and exits 0. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define FEDGE_PAUSE_VERSION "3.10-fedge"

static void on_stop(int signo) {
  (void)signo;
  _exit(0);
}

static void on_child(int signo) {
  (void)signo;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(int argc, char** argv) {
  if (argc > 1 && strcmp(argv[1], "-v") == 0) {
    printf("pause version %s\n", FEDGE_PAUSE_VERSION);
    return 0;
  }
  if (getpid() != 1) fprintf(stderr, "pause: warning: not PID 1\n");

  struct sigaction stop = {0};
  stop.sa_handler = on_stop;
  if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0) return 1;
  struct sigaction child = {0};
  child.sa_handler = on_child;
  child.sa_flags = SA_NOCLDSTOP;
  if (sigaction(SIGCHLD, &child, NULL) < 0) return 2;

  for (;;) pause();
  return 42; /* unreachable */
}
