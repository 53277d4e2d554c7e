/*
 * agent-supervise's init: PID 1 of an agent's own PID namespace.
 *
 * Why: membership of an agent's tree must not depend on anything the agent can
 * change. A double-forked, setsid'ed child with a scrubbed environment leaves every
 * trace a supervisor can follow from outside, except its PID namespace: when the
 * namespace's PID 1 exits, the kernel SIGKILLs every process left in it. And a
 * process in a child namespace cannot name any process outside it, so `kill -9 -1`
 * reaches only its own agent, never a neighbour or the supervisor.
 *
 * Why not let the agent itself be PID 1: the kernel delivers to a namespace's init
 * only the signals it has a handler for, so an agent that does not handle SIGTERM
 * would ignore the supervisor's SIGTERM; and orphans are reparented to PID 1, which
 * must reap them. That is this program's whole job (the role tini plays in
 * containers): it forks the agent, reaps everything, and reports the agent's own
 * wait status to the supervisor.
 *
 * usage: _nsinit STATUS_FD REPORT_FD GRACE_MS NPATHS PATH... -- ARGV...
 *
 * - The agent is exec'd over the candidate PATHs as the spawner would (a shell's
 *   rules: the first that runs; else the first errno that is not ENOENT). If none
 *   runs, "11:errno" (S_EXEC) goes on REPORT_FD, exactly as the spawner reports it.
 * - Signals are not forwarded: the supervisor signals every process of the cage
 *   itself, by its pid in the supervisor's namespace. This init blocks them all, so
 *   only SIGKILL ends it, and then the kernel ends the whole namespace.
 * - When the agent exits: every process it left gets SIGTERM, then up to GRACE_MS to
 *   go, then this init exits and the kernel SIGKILLs the rest. Before exiting it
 *   writes one line on STATUS_FD:
 *     "<wait status> <leftovers> <drain ms> <shm files> <shm bytes> <sysv segments> <sysv bytes>\n"
 *   where the shm and sysv figures are what the agent left in its private /dev/shm
 *   and IPC namespace: both vanish with the namespace (systemd's RemoveIPC=).
 * Its own exit status is 0; the supervisor takes the agent's from STATUS_FD.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define S_EXEC 11

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reap every child that has exited; note the agent's status. Returns how many. */
static int reap(pid_t agent, int *agent_status, int *agent_done) {
    int n = 0, status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        n++;
        if (pid == agent) {
            *agent_status = status;
            *agent_done = 1;
        }
    }
    return n;
}

static int has_children(void) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    /* WNOWAIT: look without reaping. ECHILD: none at all. */
    return waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) == 0;
}

/* Processes left in this namespace besides init (its /proc is the supervisor's, so
 * count our own children, which every orphan becomes). */
static int count_children(void) {
    /* getpid() is 1 here, but /proc is the parent namespace's, where 1 is another
     * process: /proc/thread-self resolves to us whatever the namespace. */
    int fd = open("/proc/thread-self/children", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[4096];
    int n = 0, in_word = 0;
    ssize_t got;
    while ((got = read(fd, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < got; i++) {
            if (buf[i] == ' ' || buf[i] == '\n') in_word = 0;
            else if (!in_word) { in_word = 1; n++; }
        }
    }
    close(fd);
    return n;
}

static void shm_left(long long *files, long long *bytes) {
    *files = *bytes = 0;
    DIR *d = opendir("/dev/shm");
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
            (*files)++;
            *bytes += (long long)st.st_blocks * 512;
        }
    }
    closedir(d);
}

/* /proc/sysvipc/shm lists the segments of the reader's IPC namespace: ours. */
static void sysv_left(long long *segs, long long *bytes) {
    *segs = *bytes = 0;
    FILE *f = fopen("/proc/sysvipc/shm", "re");
    if (!f) return;
    char line[512];
    if (!fgets(line, sizeof line, f)) { fclose(f); return; }  /* header */
    while (fgets(line, sizeof line, f)) {
        long long key, id, perms, size;
        if (sscanf(line, "%lld %lld %llo %lld", &key, &id, &perms, &size) == 4) {
            (*segs)++;
            *bytes += size;
        }
    }
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "%s: started by agent-supervise only\n", argv[0]);
        return 2;
    }
    int status_fd = atoi(argv[1]), report_fd = atoi(argv[2]);
    long grace_ms = atol(argv[3]);
    int npaths = atoi(argv[4]);
    if (npaths < 1 || 5 + npaths + 1 >= argc || strcmp(argv[5 + npaths], "--") != 0) {
        fprintf(stderr, "%s: bad arguments\n", argv[0]);
        return 2;
    }
    char **paths = argv + 5, **agent_argv = argv + 5 + npaths + 1;
    /* Ours to keep, not the agent's. */
    fcntl(status_fd, F_SETFD, FD_CLOEXEC);
    fcntl(report_fd, F_SETFD, FD_CLOEXEC);

    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    pid_t agent = fork();
    if (agent < 0) {
        char msg[32];
        int n = snprintf(msg, sizeof msg, "%d:%d", S_EXEC, errno);
        (void)!write(report_fd, msg, n);
        return 255;
    }
    if (agent == 0) {
        /* The agent: with the signal mask this init was started with. */
        sigprocmask(SIG_SETMASK, &old, NULL);
        close(status_fd);
        int exec_errno = 0;
        for (int i = 0; i < npaths; i++) {
            execv(paths[i], agent_argv);
            if (errno != ENOENT && errno != ENOTDIR && exec_errno == 0) exec_errno = errno;
        }
        char msg[32];
        int n = snprintf(msg, sizeof msg, "%d:%d", S_EXEC, exec_errno ? exec_errno : ENOENT);
        (void)!write(report_fd, msg, n);
        _exit(255);
    }
    close(report_fd);  /* the supervisor's read ends when the agent has exec'd */

    int agent_status = 0, agent_done = 0;
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    while (!agent_done) {
        siginfo_t si;
        /* Every signal is blocked; only SIGCHLD is waited for, the rest stay pending
         * and are discarded: they were meant for the agent, which got its own copy. */
        if (sigwaitinfo(&chld, &si) < 0 && errno != EINTR) break;
        reap(agent, &agent_status, &agent_done);
    }
    long long exited = now_ms();
    int leftovers = count_children();
    if (leftovers > 0) {
        kill(-1, SIGTERM);  /* from PID 1: every process of this namespace but us */
        long long deadline = exited + grace_ms;
        while (has_children() || count_children() > 0) {
            reap(agent, &agent_status, &agent_done);
            if (!has_children()) break;
            long long left = deadline - now_ms();
            if (left <= 0) break;
            struct timespec ts = {left / 1000, (left % 1000) * 1000000};
            siginfo_t si;
            sigtimedwait(&chld, &si, &ts);
        }
    }
    long long shm_files, shm_bytes, sysv_segs, sysv_bytes;
    shm_left(&shm_files, &shm_bytes);
    sysv_left(&sysv_segs, &sysv_bytes);
    char line[160];
    int n = snprintf(line, sizeof line, "%d %d %lld %lld %lld %lld %lld\n", agent_status,
                     leftovers, now_ms() - exited, shm_files, shm_bytes, sysv_segs,
                     sysv_bytes);
    (void)!write(status_fd, line, n);
    return 0;  /* the kernel now SIGKILLs whatever is left in the namespace */
}
