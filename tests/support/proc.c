/* proc.c: spawning and reaping test child processes. */
#include "proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct proc {
    pid_t pid;
    bool reaped;
    int exit_status;
};

#define PROC_MAX_ENV  4096
#define PROC_PATH_MAX 4096

long long test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void test_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int test_wait_atomic(atomic_int *v, int want, int timeout_ms)
{
    long long end = test_now_ms() + timeout_ms;
    while (atomic_load(v) < want && test_now_ms() < end) {
        test_sleep_ms(5);
    }
    return atomic_load(v);
}

/* Resolves a bare program name on PATH before fork (execvp is not
 * async-signal-safe in a threaded parent). */
static bool proc__resolve(const char *name, char *out, size_t cap)
{
    if (strchr(name, '/')) {
        return snprintf(out, cap, "%s", name) < (int)cap;
    }
    const char *path = getenv("PATH");
    if (!path) {
        path = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
    }
    while (*path) {
        const char *end = strchr(path, ':');
        size_t dlen = end ? (size_t)(end - path) : strlen(path);
        int n = snprintf(out, cap, "%.*s/%s", (int)dlen, path, name);
        if (n > 0 && (size_t)n < cap && access(out, X_OK) == 0) {
            return true;
        }
        if (!end) {
            break;
        }
        path = end + 1;
    }
    return false;
}

static bool proc__env_overridden(const char *entry, const char *const env_add[])
{
    const char *eq = strchr(entry, '=');
    size_t klen = eq ? (size_t)(eq - entry) : strlen(entry);
    for (size_t i = 0; env_add && env_add[i]; i++) {
        if (strncmp(env_add[i], entry, klen) == 0 && env_add[i][klen] == '=') {
            return true;
        }
    }
    return false;
}

ch_status proc_spawn(proc **out, const char *const argv[], const char *const env_add[], const char *log_path)
{
    ch_status st = CH_INTERNAL;
    char **envp = NULL;
    int logfd = -1, nullfd = -1;
    proc *p = NULL;
    char path[PROC_PATH_MAX];

    *out = NULL;
    if (!argv || !argv[0]) {
        return CH_INVALID_ARGUMENT;
    }
    if (!proc__resolve(argv[0], path, sizeof path)) {
        fprintf(stderr, "proc_spawn: %s not found\n", argv[0]);
        return CH_NOT_FOUND;
    }
    size_t n = 0;
    envp = calloc(PROC_MAX_ENV + 1, sizeof *envp);
    if (!envp) {
        st = CH_NO_MEMORY;
        goto cleanup;
    }
    for (size_t i = 0; environ && environ[i] && n < PROC_MAX_ENV; i++) {
        if (!proc__env_overridden(environ[i], env_add)) {
            envp[n++] = environ[i];
        }
    }
    for (size_t i = 0; env_add && env_add[i] && n < PROC_MAX_ENV; i++) {
        envp[n++] = (char *)env_add[i];
    }
    nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (log_path) {
        logfd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (logfd < 0) {
            fprintf(stderr, "proc_spawn: open %s: %s\n", log_path, strerror(errno));
            goto cleanup;
        }
    }
    p = calloc(1, sizeof *p);
    if (!p) {
        st = CH_NO_MEMORY;
        goto cleanup;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "proc_spawn: fork: %s\n", strerror(errno));
        goto cleanup;
    }
    if (pid == 0) {
        /* Child: async-signal-safe calls only. Die with the parent (thread)
         * so a crashed test leaves nothing running. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) {
            _exit(127);
        }
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        for (int sig = 1; sig < NSIG; sig++) {
            sigaction(sig, &sa, NULL);
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (nullfd >= 0) {
            dup2(nullfd, 0);
        }
        if (logfd >= 0) {
            dup2(logfd, 1);
            dup2(logfd, 2);
        }
        execve(path, (char *const *)argv, envp);
        _exit(127);
    }
    p->pid = pid;
    *out = p;
    p = NULL;
    st = CH_OK;
cleanup:
    free(p);
    free(envp);
    if (logfd >= 0) {
        close(logfd);
    }
    if (nullfd >= 0) {
        close(nullfd);
    }
    return st;
}

pid_t proc_pid(const proc *p)
{
    return p->pid;
}

static void proc__record(proc *p, int wstatus)
{
    p->reaped = true;
    if (WIFEXITED(wstatus)) {
        p->exit_status = WEXITSTATUS(wstatus);
    } else if (WIFSIGNALED(wstatus)) {
        p->exit_status = 128 + WTERMSIG(wstatus);
    } else {
        p->exit_status = -1;
    }
}

int proc_running(proc *p)
{
    if (!p || p->reaped) {
        return 0;
    }
    int ws;
    pid_t r = waitpid(p->pid, &ws, WNOHANG);
    if (r == p->pid) {
        proc__record(p, ws);
        return 0;
    }
    if (r < 0 && errno == ECHILD) {
        p->reaped = true;
        p->exit_status = -1;
        return 0;
    }
    return 1;
}

ch_status proc_signal(proc *p, int sig)
{
    if (!p || !proc_running(p)) {
        return CH_OK;
    }
    return kill(p->pid, sig) == 0 || errno == ESRCH ? CH_OK : CH_INTERNAL;
}

ch_status proc_wait(proc *p, int timeout_ms, int *exit_status)
{
    long long deadline = test_now_ms() + timeout_ms;
    while (proc_running(p)) {
        if (timeout_ms >= 0 && test_now_ms() >= deadline) {
            return CH_TIMEOUT;
        }
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (exit_status) {
        *exit_status = p->exit_status;
    }
    return CH_OK;
}

ch_status proc_kill_and_wait(proc *p)
{
    if (!p) {
        return CH_OK;
    }
    proc_signal(p, SIGKILL);
    return proc_wait(p, 10000, NULL);
}

void proc_destroy(proc *p)
{
    if (!p) {
        return;
    }
    if (proc_running(p)) {
        proc_kill_and_wait(p);
    }
    free(p);
}

/* Binds a fresh socket to port 0 on 127.0.0.1: the fd (the caller closes
 * it), its port in *port; -1 on failure. */
static int probe_port(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t alen = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

bool test_free_ports(int *ports, int n)
{
    int fds[16];
    int k = 0;
    if (n < 0 || n > (int)(sizeof fds / sizeof fds[0])) {
        return false;
    }
    while (k < n && (fds[k] = probe_port(&ports[k])) >= 0) {
        k++;
    }
    for (int i = 0; i < k; i++) {
        close(fds[i]);
    }
    return k == n;
}

int test_free_port(void)
{
    int port;
    return test_free_ports(&port, 1) ? port : -1;
}
