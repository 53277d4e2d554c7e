/*
 * agent_supervise._spawn: start an agent inside its cage with vfork, not fork.
 *
 * Why this exists: entering a cage must happen in the child, between fork and
 * exec. Python can only do that with subprocess's preexec_fn, which forces a full
 * fork() of the supervisor (page tables copied, every page copy-on-write) and runs
 * Python code in the child: 2.3 ms per spawn measured on this project's machines,
 * against 0.2 ms for subprocess's own vfork path. This module does the same child
 * steps as raw system calls after vfork(): the child shares the parent's memory
 * until it execs, so it only touches its own stack and C arrays built beforehand.
 *
 * Child steps, in order (each failure is reported as "step:errno" on report_fd):
 *   setsid (or, for `run` in a terminal, a process group of its own made the terminal's
 *   foreground one); stdio dup2; enter the cage (write "0" to each open cgroup.procs);
 *   setrlimit (the cage's; and RLIMIT_NOFILE back to what the supervisor had);
 *   setgroups/setresgid/setresuid; PR_SET_PDEATHSIG (after the
 *   credential change, which clears it); parent still alive?; chdir;
 *   signal handlers back to default, mask restored; close other fds on exec;
 *   execve over the candidate paths.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436  /* the same number on every architecture */
#endif

/* Steps, reported to the parent by number. S_CAGE and S_RLIMIT report
 * S_CAGE_BASE + the index of the failing cage item instead (procs first, then rlimits). */
enum { S_SETSID = 1, S_STDIO, S_CAGE, S_RLIMIT, S_GROUPS, S_GID, S_UID, S_PDEATHSIG,
       S_PARENT_GONE, S_CHDIR, S_EXEC, S_ISOLATE, S_CAGE_BASE = 100 };

#define MAX_CAGE_ITEMS 8
#define CHILD_STACK (256 * 1024)

static void report(int fd, int step, int err) {
    char buf[32];
    int n = 0, v = step;
    char tmp[16];
    int t = 0;
    /* itoa by hand: nothing here may allocate. */
    do { tmp[t++] = '0' + v % 10; v /= 10; } while (v);
    while (t) buf[n++] = tmp[--t];
    buf[n++] = ':';
    v = err;
    do { tmp[t++] = '0' + v % 10; v /= 10; } while (v);
    while (t) buf[n++] = tmp[--t];
    (void)!write(fd, buf, n);
}

static char **list_to_argv(PyObject *seq) {
    Py_ssize_t n = PySequence_Length(seq);
    if (n < 0) return NULL;
    char **out = PyMem_Calloc(n + 1, sizeof(char *));
    if (!out) { PyErr_NoMemory(); return NULL; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_GetItem(seq, i);
        if (!item) goto fail;
        char *s;  /* borrowed into the list's own bytes; an embedded NUL is ValueError */
        int bad = PyBytes_AsStringAndSize(item, &s, NULL);
        Py_DECREF(item);
        if (bad < 0) goto fail;
        out[i] = s;
    }
    return out;
fail:
    PyMem_Free(out);
    return NULL;
}

/* Everything the child needs, built by the parent before vfork/clone: the child
 * only reads it (it shares the parent's memory until it execs). */
struct child_args {
    char **paths, **argv, **envp;
    const char *cwd;
    int fds[3];
    int *procs_fds, nprocs;
    int *rl_resources, nrlimits;
    long long *rl_values;
    long long nofile_soft, nofile_hard;
    long uid, gid;
    gid_t *groups;
    int ngroups, death_signal, report_fd;
    pid_t parent;
    /* Namespaces (see _nsinit.c): set only when the child was cloned into new PID,
     * IPC and mount namespaces. */
    int isolated;
    const char *shm_options;   /* tmpfs options for the private /dev/shm */
    const char *sysctl_paths[4], *sysctl_values[4];
    const char *parent_proc;   /* "/proc/<parent pid>", to see the parent is alive */
    int keep_fds[2];           /* survive exec (the init's report and status pipes) */
    int fg_tty;                /* >= 0: stay in the session, own the terminal's foreground */
};

static int write_file(const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, value, strlen(value));
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)strlen(value) ? 0 : -1;
}

/* A private /dev/shm sized to the cap, and the IPC namespace's own SysV limits: the
 * agent's shared memory is bounded, and it goes when the namespaces go. Mount
 * events must not propagate back to the supervisor's namespace: make / a slave. */
static int isolate(struct child_args *a) {
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0) return -1;
    /* A machine without /dev/shm (a minimal container) has none to privatize. */
    if (access("/dev/shm", F_OK) == 0
            && mount("agent-shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, a->shm_options) < 0)
        return -1;
    for (int i = 0; i < 4 && a->sysctl_paths[i]; i++)
        if (write_file(a->sysctl_paths[i], a->sysctl_values[i]) < 0) return -1;
    return 0;
}

/* Never inlined: the child's locals must live in its own frame, below the parent's
 * (after vfork it shares the parent's stack until exec), not in slots of spawn()'s
 * frame that the parent reads again once it resumes. */
static __attribute__((noinline, noreturn)) void child(struct child_args *a) {
    int step;
    int fds[3] = {a->fds[0], a->fds[1], a->fds[2]};
    if (a->fg_tty >= 0) {
        /* As a shell's job control does: a process group of its own, in the caller's
         * session (so /dev/tty opens and the terminal's signals reach it), made the
         * terminal's foreground group. Every signal is blocked here, so the
         * tcsetpgrp of a background group is allowed rather than stopped by SIGTTOU.
         * In a new PID namespace getpid() is 1, which names this process there. */
        if (setpgid(0, 0) < 0 || tcsetpgrp(a->fg_tty, getpid()) < 0) {
            step = S_SETSID; goto fail;
        }
    } else if (setsid() < 0) { step = S_SETSID; goto fail; }
    /* Move any source fd that sits on another stdio slot out of the way first. */
    for (int i = 0; i < 3; i++) {
        if (fds[i] >= 0 && fds[i] < 3 && fds[i] != i) {
            int moved = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
            if (moved < 0) { step = S_STDIO; goto fail; }
            fds[i] = moved;
        }
    }
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 0) continue;
        /* dup2 clears close-on-exec on the copy; an fd already in place keeps it. */
        if (fds[i] == i ? fcntl(i, F_SETFD, 0) < 0 : dup2(fds[i], i) < 0) {
            step = S_STDIO; goto fail;
        }
    }
    for (int i = 0; i < a->nprocs; i++) {
        if (write(a->procs_fds[i], "0", 1) != 1) { step = S_CAGE_BASE + i; goto fail; }
    }
    for (int i = 0; i < a->nrlimits; i++) {
        struct rlimit rl = {(rlim_t)a->rl_values[i], (rlim_t)a->rl_values[i]};
        if (setrlimit(a->rl_resources[i], &rl) < 0) {
            step = S_CAGE_BASE + a->nprocs + i; goto fail;
        }
    }
    if (a->nofile_soft >= 0) {  /* the limit the supervisor had before raising its own */
        struct rlimit rl = {(rlim_t)a->nofile_soft, (rlim_t)a->nofile_hard};
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) { step = S_RLIMIT; goto fail; }
    }
    /* Before dropping privileges: mounting and the IPC sysctls need them. */
    if (a->isolated && isolate(a) < 0) { step = S_ISOLATE; goto fail; }
    /* Raw system calls, not glibc's wrappers: those broadcast the change to every
     * thread of the process, and a vfork child still shares the parent's thread
     * list, so the parent's threads would change user too. */
    if (a->ngroups >= 0 && syscall(SYS_setgroups, a->ngroups, a->groups) < 0) {
        step = S_GROUPS; goto fail;
    }
    if (a->gid >= 0 && syscall(SYS_setresgid, a->gid, a->gid, a->gid) < 0) {
        step = S_GID; goto fail;
    }
    if (a->uid >= 0 && syscall(SYS_setresuid, a->uid, a->uid, a->uid) < 0) {
        step = S_UID; goto fail;
    }
    if (a->death_signal > 0 && prctl(PR_SET_PDEATHSIG, a->death_signal, 0, 0, 0) < 0) {
        step = S_PDEATHSIG; goto fail;
    }
    /* The parent died before prctl: nobody will send the signal; act as if sent. In
     * a new PID namespace getppid() is 0 (the parent is outside it): look in /proc,
     * which is still the parent namespace's. */
    if (a->death_signal > 0 && (a->isolated ? access(a->parent_proc, F_OK) < 0
                                            : getppid() != a->parent)) {
        kill(getpid(), a->death_signal);
        step = S_PARENT_GONE; errno = ESRCH; goto fail;
    }
    if (a->cwd && chdir(a->cwd) < 0) { step = S_CHDIR; goto fail; }
    /* Python's handlers are C functions writing to a wakeup fd: back to default. */
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa;
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        /* The supervisor ignores the job-control signals while it is in the
         * background of a terminal: the agent gets them back at their default. */
        int ours = sig == SIGPIPE || sig == SIGXFSZ
                   || (a->fg_tty >= 0 && (sig == SIGTTOU || sig == SIGTTIN || sig == SIGTSTP));
        if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL
                && (sa.sa_handler != SIG_IGN || ours)) {
            sa.sa_handler = SIG_DFL;
            sa.sa_flags = 0;
            sigemptyset(&sa.sa_mask);
            sigaction(sig, &sa, NULL);
        }
    }
    /* The agent starts with no signal blocked, as a shell starts a program: the
     * mask survives exec, and a supervisor thread that blocks signals (Ray blocks
     * SIGINT in its worker's main thread) would give the agent one that never sees
     * a forwarded SIGINT. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        /* Before Linux 5.11: mark each fd; report_fd stays open until exec. */
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = 3; fd < max && fd < 65536; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    for (int i = 0; i < 2; i++) {
        if (a->keep_fds[i] >= 0 && fcntl(a->keep_fds[i], F_SETFD, 0) < 0) {
            step = S_ISOLATE; goto fail;
        }
    }
    /* Like a shell: a candidate that exists but cannot run (EACCES...) is what to
     * report, unless a later one runs; else "not found". */
    int exec_errno = 0;
    for (char **p = a->paths; *p; p++) {
        execve(*p, a->argv, a->envp);
        if (errno != ENOENT && errno != ENOTDIR && exec_errno == 0) exec_errno = errno;
    }
    errno = exec_errno ? exec_errno : ENOENT;
    step = S_EXEC;
fail:
    report(a->report_fd, step, errno);
    _exit(255);
}

static int cloned_child(void *arg) {
    child((struct child_args *)arg);  /* never returns */
}

static PyObject *spawn(PyObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"paths", "argv", "envp", "cwd", "stdin", "stdout", "stderr",
                            "procs_fds", "rlimits", "nofile_soft",
                            "nofile_hard", "uid", "gid", "groups", "death_signal",
                            "report_fd", "isolation", "foreground_tty", NULL};
    PyObject *paths_o, *argv_o, *envp_o, *cwd_o, *groups_o, *procs_o, *rlimits_o;
    PyObject *isolation_o = Py_None;
    int fg_tty = -1;
    int fds[3], death_signal, report_fd;
    long long nofile_soft, nofile_hard;
    long uid, gid;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOiiiOOLLllOii|Oi", names, &paths_o,
                                     &argv_o, &envp_o, &cwd_o, &fds[0], &fds[1], &fds[2],
                                     &procs_o, &rlimits_o, &nofile_soft,
                                     &nofile_hard, &uid, &gid, &groups_o, &death_signal,
                                     &report_fd, &isolation_o, &fg_tty))
        return NULL;
    struct child_args a;
    memset(&a, 0, sizeof a);
    a.keep_fds[0] = a.keep_fds[1] = -1;
    a.fg_tty = fg_tty;
    /* isolation: (shm tmpfs options, ((sysctl path, value), ...), (keep_fd, keep_fd))
     * as bytes and ints; the strings stay owned by the tuple while we run. */
    if (isolation_o != Py_None) {
        PyObject *sysctls;
        char *shm;
        if (!PyArg_ParseTuple(isolation_o, "yO(ii)", &shm, &sysctls, &a.keep_fds[0],
                              &a.keep_fds[1]))
            return NULL;
        Py_ssize_t n = PySequence_Length(sysctls);
        if (n < 0 || n > 4) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "at most 4 sysctls");
            return NULL;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PySequence_GetItem(sysctls, i);  /* borrowed from the tuple */
            if (!item) return NULL;
            int ok = PyArg_ParseTuple(item, "yy", &a.sysctl_paths[i], &a.sysctl_values[i]);
            Py_DECREF(item);
            if (!ok) return NULL;
        }
        a.isolated = 1;
        a.shm_options = shm;
    }
    /* The cage's steps, copied into C arrays on our stack before vfork. */
    int procs_fds[MAX_CAGE_ITEMS], rl_resources[MAX_CAGE_ITEMS];
    long long rl_values[MAX_CAGE_ITEMS];
    Py_ssize_t nprocs = PySequence_Length(procs_o), nrl = PySequence_Length(rlimits_o);
    if (nprocs < 0 || nrl < 0) return NULL;
    if (nprocs > MAX_CAGE_ITEMS || nrl > MAX_CAGE_ITEMS) {
        PyErr_SetString(PyExc_ValueError, "too many cage steps");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nprocs; i++) {
        PyObject *o = PySequence_GetItem(procs_o, i);
        if (!o) return NULL;
        procs_fds[i] = (int)PyLong_AsLong(o);
        Py_DECREF(o);
        if (PyErr_Occurred()) return NULL;
    }
    for (Py_ssize_t i = 0; i < nrl; i++) {
        PyObject *o = PySequence_GetItem(rlimits_o, i);
        if (!o) return NULL;
        int ok = PyArg_ParseTuple(o, "iL", &rl_resources[i], &rl_values[i]);
        Py_DECREF(o);
        if (!ok) return NULL;
    }
    char **paths = NULL, **argv = NULL, **envp = NULL;
    gid_t *groups = NULL;
    int ngroups = -1;
    char *cwd = NULL;
    if (cwd_o != Py_None && PyBytes_AsStringAndSize(cwd_o, &cwd, NULL) < 0) return NULL;
    if (!(paths = list_to_argv(paths_o)) || !(argv = list_to_argv(argv_o))
            || !(envp = list_to_argv(envp_o)))
        goto out;
    if (groups_o != Py_None) {
        Py_ssize_t n = PySequence_Length(groups_o);
        if (n < 0) goto out;
        groups = PyMem_Calloc(n + 1, sizeof(gid_t));
        if (!groups) { PyErr_NoMemory(); goto out; }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *g = PySequence_GetItem(groups_o, i);
            if (!g) goto out;
            groups[i] = (gid_t)PyLong_AsLong(g);
            Py_DECREF(g);
            if (PyErr_Occurred()) goto out;
        }
        ngroups = (int)n;
    }
    sigset_t all, old;
    sigfillset(&all);
    /* No signal may run a handler in the child while it shares our memory. */
    pthread_sigmask(SIG_BLOCK, &all, &old);
    a.paths = paths; a.argv = argv; a.envp = envp; a.cwd = cwd;
    memcpy(a.fds, fds, sizeof fds);
    a.procs_fds = procs_fds; a.nprocs = (int)nprocs;
    a.rl_resources = rl_resources; a.rl_values = rl_values; a.nrlimits = (int)nrl;
    a.nofile_soft = nofile_soft; a.nofile_hard = nofile_hard;
    a.uid = uid; a.gid = gid; a.groups = groups; a.ngroups = ngroups;
    a.death_signal = death_signal; a.report_fd = report_fd;
    a.parent = getpid();
    char parent_proc[32];
    snprintf(parent_proc, sizeof parent_proc, "/proc/%d", (int)a.parent);
    a.parent_proc = parent_proc;
    pid_t pid;
    char *stack = NULL;
    if (a.isolated) {
        /* glibc's posix_spawn does the same: clone with CLONE_VM | CLONE_VFORK on a
         * stack of the child's own. The flags put the child at PID 1 of new PID,
         * IPC and mount namespaces (unshare() would not move the caller itself). */
        stack = PyMem_Malloc(CHILD_STACK);
        if (!stack) { pthread_sigmask(SIG_SETMASK, &old, NULL); PyErr_NoMemory(); goto out; }
        pid = clone(cloned_child, stack + CHILD_STACK,
                    CLONE_VM | CLONE_VFORK | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNS
                    | SIGCHLD, &a);
    } else {
        pid = vfork();
        if (pid == 0) child(&a);
    }
    int saved = errno;
    PyMem_Free(stack);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    PyMem_Free(paths);
    PyMem_Free(argv);
    PyMem_Free(envp);
    PyMem_Free(groups);
    if (pid < 0) {
        errno = saved;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(pid);
out:
    PyMem_Free(paths);
    PyMem_Free(argv);
    PyMem_Free(envp);
    PyMem_Free(groups);
    return NULL;
}

/* prctl(option, arg): for the supervisor itself (subreaper, parent-death signal).
 * Here rather than through ctypes, whose import costs every `run` a few ms. */
static PyObject *py_prctl(PyObject *self, PyObject *args) {
    int option;
    unsigned long arg;
    if (!PyArg_ParseTuple(args, "ik", &option, &arg))
        return NULL;
    int result = prctl(option, arg, 0UL, 0UL, 0UL);
    if (result < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(result);
}

/* setns(fd, nstype): os.setns arrived in Python 3.12; the watchdog uses it to read an
 * agent's SysV shared memory from inside the agent's IPC namespace. */
static PyObject *py_setns(PyObject *self, PyObject *args) {
    int fd, nstype;
    if (!PyArg_ParseTuple(args, "ii", &fd, &nstype))
        return NULL;
    if (setns(fd, nstype) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"spawn", (PyCFunction)(void (*)(void))spawn, METH_VARARGS | METH_KEYWORDS,
     "spawn(paths, argv, envp, cwd, stdin, stdout, stderr, procs_fds, rlimits, "
     "nofile_soft, nofile_hard, uid, gid, groups, death_signal, "
     "report_fd) -> pid\n\n"
     "vfork a child that enters its cage and execs. Failures come as 'step:errno' "
     "on report_fd (the child then exits 255)."},
    {"setns", py_setns, METH_VARARGS, "setns(fd, nstype): setns(2)."},
    {"prctl", py_prctl, METH_VARARGS,
     "prctl(option, arg) -> int: prctl(2) with the other arguments 0."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_spawn",
                                    "Spawning agents into their cages with vfork.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__spawn(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyModule_AddIntConstant(m, "S_SETSID", S_SETSID);
    PyModule_AddIntConstant(m, "S_STDIO", S_STDIO);
    PyModule_AddIntConstant(m, "S_CAGE", S_CAGE);
    PyModule_AddIntConstant(m, "S_RLIMIT", S_RLIMIT);
    PyModule_AddIntConstant(m, "S_GROUPS", S_GROUPS);
    PyModule_AddIntConstant(m, "S_GID", S_GID);
    PyModule_AddIntConstant(m, "S_UID", S_UID);
    PyModule_AddIntConstant(m, "S_PDEATHSIG", S_PDEATHSIG);
    PyModule_AddIntConstant(m, "S_PARENT_GONE", S_PARENT_GONE);
    PyModule_AddIntConstant(m, "S_CHDIR", S_CHDIR);
    PyModule_AddIntConstant(m, "S_EXEC", S_EXEC);
    PyModule_AddIntConstant(m, "S_CAGE_BASE", S_CAGE_BASE);
    PyModule_AddIntConstant(m, "S_ISOLATE", S_ISOLATE);
    return m;
}
