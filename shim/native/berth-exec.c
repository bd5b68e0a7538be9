/*
 * berth-exec: the last step of an exec (docker exec, a health probe) into a running container.
 *
 * The supervisor starts it with posix_spawn (vfork-like: no copy of the 30 MiB interpreter,
 * no Python in the child) already inside the container's PID namespace, with a new session and
 * default signals. It reads its plan from a sealed file (argv[1] is its fd), then, as
 * shim/supervisor/child.py's exec_process does for a container's first process: joins the
 * container's cgroups and namespaces (mount last), takes the container's root, opens a pty of
 * the container's devpts if asked (the master goes back over a socket), resolves the user in
 * the container's /etc/passwd and /etc/group, sets stdio, rlimits, seccomp, the capability
 * bounding set, groups and ids, the cwd, finds the program in PATH, closes every other fd and
 * execs. Any failure is written, in Docker's words, to the plan's error pipe (close-on-exec, so
 * a successful execve closes it empty) and the helper exits 1.
 *
 * The plan's encoding is shim/supervisor/exec_child.py's encode(): little-endian integers,
 * strings and byte strings as a u32 length then the bytes, lists as a u32 count then items.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#define PLAN_MAGIC 0x31584542u /* "BEX1" */
#define FLAG_TERMINAL 1u
#define FLAG_NO_NEW_PRIVS 2u
#define MAX_PLAN (64u << 20)
#define MAX_DB (4u << 20) /* /etc/passwd and /etc/group are read up to this size */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct strlist {
    uint32_t count;
    char **items;
};

struct plan {
    uint32_t flags;
    int32_t stdin_fd, stdout_fd, stderr_fd, pty_socket_fd, err_fd, root_fd;
    uint32_t console_height, console_width;
    int64_t nofile_soft, nofile_hard;
    uint32_t n_rlimits;
    int32_t *rlimit_kinds;
    int64_t *rlimit_soft, *rlimit_hard;
    uint32_t n_caps;
    uint32_t *caps;
    uint32_t n_namespaces;
    int32_t *ns_fds, *ns_types;
    struct strlist cgroup_procs;
    char *user;
    struct strlist group_add;
    struct strlist args;
    struct strlist env;
    char *cwd;
    uint32_t seccomp_len;
    unsigned char *seccomp;
};

static int err_fd = -1;
static const char *step = "init";

/* Go's wording of an errno: strerror with a lower-case first letter. */
static const char *errtext(int err) {
    static char buf[256];
    snprintf(buf, sizeof buf, "%s", strerror(err));
    if (buf[0] >= 'A' && buf[0] <= 'Z')
        buf[0] = (char)(buf[0] - 'A' + 'a');
    return buf;
}

static void __attribute__((noreturn, format(printf, 1, 2))) fail(const char *fmt, ...) {
    char message[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof message)
        n = sizeof message - 1;
    if (err_fd >= 0) {
        ssize_t left = n, off = 0;
        while (left > 0) {
            ssize_t w = write(err_fd, message + off, (size_t)left);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            off += w;
            left -= w;
        }
    }
    _exit(1);
}

/* A failed system call of the current step, as the Python children word it. */
static void __attribute__((noreturn)) fail_errno(void) { fail("%s: %s", step, errtext(errno)); }

/* ---- the plan ---------------------------------------------------------------------------- */

struct reader {
    const unsigned char *data;
    size_t size, off;
};

static void need(struct reader *r, size_t n) {
    if (n > r->size - r->off)
        fail("init: internal error: truncated exec plan");
}

static uint32_t u32(struct reader *r) {
    uint32_t v;
    need(r, 4);
    memcpy(&v, r->data + r->off, 4);
    r->off += 4;
    return v;
}

static int32_t i32(struct reader *r) { return (int32_t)u32(r); }

static int64_t i64(struct reader *r) {
    int64_t v;
    need(r, 8);
    memcpy(&v, r->data + r->off, 8);
    r->off += 8;
    return v;
}

static void *array(uint32_t count, size_t size) {
    void *p = calloc(count ? count : 1, size);
    if (!p)
        fail("init: internal error: out of memory");
    return p;
}

static unsigned char *bytes(struct reader *r, uint32_t *len) {
    uint32_t n = u32(r);
    need(r, n);
    unsigned char *out = array(n + 1, 1);
    memcpy(out, r->data + r->off, n);
    out[n] = 0;
    r->off += n;
    if (len)
        *len = n;
    return out;
}

static char *str(struct reader *r) {
    uint32_t n;
    char *s = (char *)bytes(r, &n);
    if (strlen(s) != n)
        fail("init: internal error: a NUL byte in the exec plan's strings");
    return s;
}

static struct strlist strlist(struct reader *r) {
    struct strlist l;
    l.count = u32(r);
    if (l.count > r->size)
        fail("init: internal error: truncated exec plan");
    l.items = array(l.count + 1, sizeof(char *));
    for (uint32_t i = 0; i < l.count; i++)
        l.items[i] = str(r);
    l.items[l.count] = NULL;
    return l;
}

static void read_plan(int fd, struct plan *p) {
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size <= 0 || (uint64_t)st.st_size > MAX_PLAN)
        fail("init: internal error: no exec plan");
    unsigned char *data = array((uint32_t)st.st_size, 1);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = pread(fd, data + got, (size_t)st.st_size - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("init: internal error: unreadable exec plan");
        got += (size_t)n;
    }
    close(fd);
    struct reader r = {data, got, 0};
    if (u32(&r) != PLAN_MAGIC)
        fail("init: internal error: not an exec plan");
    p->flags = u32(&r);
    p->stdin_fd = i32(&r);
    p->stdout_fd = i32(&r);
    p->stderr_fd = i32(&r);
    p->pty_socket_fd = i32(&r);
    p->err_fd = i32(&r);
    p->root_fd = i32(&r);
    p->console_height = u32(&r);
    p->console_width = u32(&r);
    p->nofile_soft = i64(&r);
    p->nofile_hard = i64(&r);
    p->n_rlimits = u32(&r);
    if (p->n_rlimits > got)
        fail("init: internal error: truncated exec plan");
    p->rlimit_kinds = array(p->n_rlimits, sizeof(int32_t));
    p->rlimit_soft = array(p->n_rlimits, sizeof(int64_t));
    p->rlimit_hard = array(p->n_rlimits, sizeof(int64_t));
    for (uint32_t i = 0; i < p->n_rlimits; i++) {
        p->rlimit_kinds[i] = i32(&r);
        p->rlimit_soft[i] = i64(&r);
        p->rlimit_hard[i] = i64(&r);
    }
    p->n_caps = u32(&r);
    if (p->n_caps > got)
        fail("init: internal error: truncated exec plan");
    p->caps = array(p->n_caps, sizeof(uint32_t));
    for (uint32_t i = 0; i < p->n_caps; i++)
        p->caps[i] = u32(&r);
    p->n_namespaces = u32(&r);
    if (p->n_namespaces > got)
        fail("init: internal error: truncated exec plan");
    p->ns_fds = array(p->n_namespaces, sizeof(int32_t));
    p->ns_types = array(p->n_namespaces, sizeof(int32_t));
    for (uint32_t i = 0; i < p->n_namespaces; i++) {
        p->ns_fds[i] = i32(&r);
        p->ns_types[i] = i32(&r);
    }
    p->cgroup_procs = strlist(&r);
    p->user = str(&r);
    p->group_add = strlist(&r);
    p->args = strlist(&r);
    p->env = strlist(&r);
    p->cwd = str(&r);
    p->seccomp = bytes(&r, &p->seccomp_len);
    if (r.off != r.size)
        fail("init: internal error: trailing bytes in the exec plan");
    if (p->args.count == 0)
        fail("init: internal error: an exec plan without a command");
}

/* ---- /etc/passwd and /etc/group ---------------------------------------------------------- */

struct row {
    uint32_t nfields;
    char **fields;
};

struct db {
    uint32_t count;
    struct row *rows;
};

/* Rows of a colon-separated database; a missing file is an empty one. Blank lines and comments
 * are skipped, fields are split on every colon. */
static struct db read_db(const char *path) {
    struct db db = {0, NULL};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return db;
    struct stat st;
    size_t cap = fstat(fd, &st) == 0 && st.st_size > 0 ? (size_t)st.st_size : MAX_DB, size = 0;
    if (cap > MAX_DB)
        cap = MAX_DB;
    char *text = array((uint32_t)cap + 1, 1); /* the file's size: one read, no regrowth */
    while (size < cap) {
        ssize_t n = read(fd, text + size, cap - size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        size += (size_t)n;
    }
    close(fd);
    text[size] = 0;
    uint32_t lines = 1;
    for (size_t i = 0; i < size; i++)
        lines += text[i] == '\n';
    db.rows = array(lines, sizeof(struct row));
    char *save = NULL;
    for (char *line = strtok_r(text, "\r\n", &save); line; line = strtok_r(NULL, "\r\n", &save)) {
        while (*line == ' ' || *line == '\t')
            line++;
        size_t len = strlen(line);
        while (len && (line[len - 1] == ' ' || line[len - 1] == '\t'))
            line[--len] = 0;
        if (!len || line[0] == '#')
            continue;
        uint32_t nfields = 1;
        for (char *c = line; *c; c++)
            nfields += *c == ':';
        struct row *row = &db.rows[db.count++];
        row->nfields = nfields;
        row->fields = array(nfields, sizeof(char *));
        char *field = line;
        for (uint32_t i = 0; i < nfields; i++) {
            char *colon = strchr(field, ':');
            if (colon)
                *colon = 0;
            row->fields[i] = field;
            field = colon ? colon + 1 : field + strlen(field);
        }
    }
    return db;
}

static int is_number(const char *s) {
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* A decimal id; numbers beyond 32 bits are refused by the kernel later, as Python's are. */
static unsigned long long number(const char *s) { return strtoull(s, NULL, 10); }

struct ids {
    uid_t uid;
    gid_t gid;
    const char *home;
    uint32_t ngroups;
    gid_t *groups;
};

/* runc's GetExecUser for a Docker --user value (as child.py's resolve_user): numeric values
 * are ids even when absent from the files, names must exist, and supplementary groups come from
 * /etc/group when no group is given. Then --group-add, after the primary group. */
static struct ids resolve_user(const char *spec, const struct strlist *group_add) {
    struct db passwd = read_db("/etc/passwd"), group = read_db("/etc/group");
    char *user_arg = strdup(spec), *group_arg = strchr(user_arg, ':');
    if (group_arg)
        *group_arg++ = 0;
    else
        group_arg = "";
    struct ids ids = {0, 0, "/", 0, NULL};
    const char *name = "";
    struct row *entry = NULL;
    for (uint32_t i = 0; i < passwd.count && !entry; i++) {
        struct row *row = &passwd.rows[i];
        if (row->nfields < 6 || !is_number(row->fields[2]) || !is_number(row->fields[3]))
            continue;
        if ((!*user_arg && number(row->fields[2]) == 0 && strcmp(row->fields[2], "0") == 0)
            || (is_number(user_arg) && number(row->fields[2]) == number(user_arg))
            || (!is_number(user_arg) && *user_arg && strcmp(row->fields[0], user_arg) == 0))
            entry = row;
    }
    if (entry) {
        name = entry->fields[0];
        ids.uid = (uid_t)number(entry->fields[2]);
        ids.gid = (gid_t)number(entry->fields[3]);
        ids.home = *entry->fields[5] ? entry->fields[5] : "/";
    } else if (is_number(user_arg)) {
        ids.uid = (uid_t)number(user_arg);
    } else if (*user_arg) {
        fail("unable to find user %s: no matching entries in passwd file", user_arg);
    }
    gid_t *found = array(group.count + group_add->count + 1, sizeof(gid_t));
    uint32_t nfound = 0;
    if (*group_arg) {
        if (is_number(group_arg)) {
            ids.gid = (gid_t)number(group_arg);
        } else {
            uint32_t i;
            for (i = 0; i < group.count; i++) {
                struct row *row = &group.rows[i];
                if (row->nfields >= 3 && strcmp(row->fields[0], group_arg) == 0 && is_number(row->fields[2])) {
                    ids.gid = (gid_t)number(row->fields[2]);
                    break;
                }
            }
            if (i == group.count)
                fail("unable to find group %s: no matching entries in group file", group_arg);
        }
    } else if (*name) {
        for (uint32_t i = 0; i < group.count; i++) {
            struct row *row = &group.rows[i];
            if (row->nfields < 4 || !is_number(row->fields[2]))
                continue;
            char *members = strdup(row->fields[3]), *save = NULL;
            for (char *m = strtok_r(members, ",", &save); m; m = strtok_r(NULL, ",", &save))
                if (strcmp(m, name) == 0) {
                    found[nfound++] = (gid_t)number(row->fields[2]);
                    break;
                }
        }
    }
    /* containerd lists the primary group among the supplementary ones (its CVE-2023-25173 fix) */
    ids.groups = array(group.count + group_add->count + 2, sizeof(gid_t));
    ids.groups[ids.ngroups++] = ids.gid;
    for (uint32_t i = 0; i < nfound; i++)
        if (found[i] != ids.gid)
            ids.groups[ids.ngroups++] = found[i];
    for (uint32_t a = 0; a < group_add->count; a++) {
        const char *add = group_add->items[a];
        gid_t gid = 0;
        uint32_t i;
        for (i = 0; i < group.count; i++) {
            struct row *row = &group.rows[i];
            if (row->nfields >= 3 && strcmp(row->fields[0], add) == 0 && is_number(row->fields[2])) {
                gid = (gid_t)number(row->fields[2]);
                break;
            }
        }
        if (i == group.count) {
            if (!is_number(add))
                fail("Unable to find group %s: no matching entries in group file", add);
            gid = (gid_t)number(add);
        }
        uint32_t seen = 0;
        for (uint32_t k = 0; k < ids.ngroups; k++)
            seen |= ids.groups[k] == gid;
        if (!seen)
            ids.groups[ids.ngroups++] = gid;
    }
    return ids;
}

/* ---- the process ------------------------------------------------------------------------- */

/* A new pty of the container's devpts; the master goes back to the supervisor. */
static int console(const struct plan *p) {
    int master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0)
        fail_errno();
    int unlock = 0;
    unsigned int number;
    if (ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCGPTN, &number) < 0)
        fail_errno();
    char path[64];
    snprintf(path, sizeof path, "/dev/pts/%u", number);
    int slave = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (slave < 0)
        fail_errno();
    if (p->console_height && p->console_width) {
        struct winsize ws = {(unsigned short)p->console_height, (unsigned short)p->console_width, 0, 0};
        if (ioctl(slave, TIOCSWINSZ, &ws) < 0)
            fail_errno();
    }
    char tag = 'm';
    struct iovec iov = {&tag, 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &master, sizeof(int));
    while (sendmsg(p->pty_socket_fd, &msg, 0) < 0)
        if (errno != EINTR)
            fail_errno();
    close(master);
    close(p->pty_socket_fd);
    return slave;
}

static rlim_t limit(int64_t v) { return v < 0 ? RLIM_INFINITY : (rlim_t)v; }

static void install_seccomp(const struct plan *p) {
    struct sock_fprog prog = {(unsigned short)(p->seccomp_len / 8), (struct sock_filter *)p->seccomp};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
        fail("unable to start container process: error during container init: unable to init seccomp: error "
             "loading seccomp filter into kernel: %s", errtext(errno));
}

/* Go's exec.LookPath as runc uses it, with its error texts. */
static const char *look_path(const char *name, const char *path_env) {
    struct stat st;
    if (strchr(name, '/')) {
        if (stat(name, &st) < 0)
            fail("exec: \"%s\": stat %s: %s", name, name, errtext(errno));
        if (S_ISDIR(st.st_mode))
            fail("exec: \"%s\": is a directory", name);
        if (!(st.st_mode & 0111))
            fail("exec: \"%s\": permission denied", name);
        return name;
    }
    const char *dir = path_env;
    for (;;) {
        const char *end = strchrnul(dir, ':');
        char *candidate;
        if (end == dir) {
            if (asprintf(&candidate, "./%s", name) < 0)
                fail("init: internal error: out of memory");
        } else if (asprintf(&candidate, "%.*s/%s", (int)(end - dir), dir, name) < 0) {
            fail("init: internal error: out of memory");
        }
        if (stat(candidate, &st) == 0 && !S_ISDIR(st.st_mode) && (st.st_mode & 0111))
            return candidate;
        free(candidate);
        if (!*end)
            break;
        dir = end + 1;
    }
    fail("exec: \"%s\": executable file not found in $PATH", name);
}

/* The environment as execve gets it: entries without a name or "=" are dropped, and a later
 * value of a name replaces the earlier one in its place (Python's dict order, as before). */
static char **environment(const struct strlist *env, const char *home) {
    char **out = array(env->count + 2, sizeof(char *));
    uint32_t n = 0;
    int has_home = 0;
    for (uint32_t i = 0; i < env->count; i++)
        has_home |= strncmp(env->items[i], "HOME=", 5) == 0;
    for (uint32_t i = 0; i <= env->count; i++) {
        char *entry;
        if (i < env->count) {
            entry = env->items[i];
        } else if (!has_home) {
            if (asprintf(&entry, "HOME=%s", home) < 0)
                fail("init: internal error: out of memory");
        } else {
            break;
        }
        char *eq = strchr(entry, '=');
        if (!eq || eq == entry)
            continue;
        size_t keylen = (size_t)(eq - entry) + 1;
        uint32_t k;
        for (k = 0; k < n; k++)
            if (strncmp(out[k], entry, keylen) == 0)
                break;
        out[k] = entry;
        if (k == n)
            n++;
    }
    out[n] = NULL;
    return out;
}

int main(int argc, char **argv) {
    prctl(PR_SET_DUMPABLE, 0); /* execve restores it; no peeking at the host's fds until then */
    if (argc != 2)
        _exit(2);
    struct plan p;
    memset(&p, 0, sizeof p);
    read_plan(atoi(argv[1]), &p);
    err_fd = p.err_fd;
    if (fcntl(err_fd, F_SETFD, FD_CLOEXEC) < 0)
        _exit(1);

    step = "join cgroups";
    for (uint32_t i = 0; i < p.cgroup_procs.count; i++) {
        int fd = open(p.cgroup_procs.items[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1)
            fail_errno();
        close(fd);
    }
    step = "join namespaces";
    for (uint32_t i = 0; i < p.n_namespaces; i++)
        if (setns(p.ns_fds[i], p.ns_types[i]) < 0)
            fail_errno();
    if (fchdir(p.root_fd) < 0 || chroot(".") < 0 || chdir("/") < 0)
        fail_errno();
    int slave = (p.flags & FLAG_TERMINAL) ? console(&p) : -1;

    step = "prepare process";
    struct ids ids = resolve_user(p.user, &p.group_add);
    int stdio[3] = {p.stdin_fd, p.stdout_fd, p.stderr_fd};
    for (int target = 0; target < 3; target++)
        if (dup2(slave >= 0 ? slave : stdio[target], target) < 0)
            fail_errno();
    if (slave >= 0 && ioctl(0, TIOCSCTTY, 0) < 0)
        fail_errno();

    struct rlimit nofile = {limit(p.nofile_soft), limit(p.nofile_hard)};
    if (setrlimit(RLIMIT_NOFILE, &nofile) < 0)
        fail_errno();
    for (uint32_t i = 0; i < p.n_rlimits; i++) {
        struct rlimit rl = {limit(p.rlimit_soft[i]), limit(p.rlimit_hard[i])};
        if (setrlimit(p.rlimit_kinds[i], &rl) < 0) {
            /* Python's resource module reported EINVAL and EPERM alike, and so did Berth */
            int err = errno == EINVAL ? EPERM : errno;
            fail("failed to create task for container: failed to create shim task: OCI runtime create failed: runc "
                 "create failed: unable to start container process: error during container init: error setting "
                 "rlimits for ready process: error setting rlimit type %d: %s: unknown",
                 p.rlimit_kinds[i], errtext(err));
        }
    }
    int no_new_privs = (p.flags & FLAG_NO_NEW_PRIVS) != 0;
    /* Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we have it
     * (runc's order); with it, as late as possible, so that few calls run under the filter. */
    if (p.seccomp_len && !no_new_privs)
        install_seccomp(&p);
    for (uint32_t i = 0; i < p.n_caps; i++)
        if (prctl(PR_CAPBSET_DROP, p.caps[i], 0, 0, 0) < 0)
            fail_errno();
    if (setgroups(ids.ngroups, ids.groups) < 0 || setgid(ids.gid) < 0 || setuid(ids.uid) < 0)
        fail_errno();
    if (chdir(p.cwd) < 0)
        fail("chdir to cwd (\"%s\") set in config.json failed: %s", p.cwd, errtext(errno));

    char **envp = environment(&p.env, ids.home);
    const char *path_env = DEFAULT_PATH;
    for (uint32_t i = p.env.count; i-- > 0;)
        if (strncmp(p.env.items[i], "PATH=", 5) == 0) {
            path_env = p.env.items[i] + 5;
            break;
        }
    const char *path = look_path(p.args.items[0], path_env);
    umask(022);
    if (no_new_privs) {
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            fail_errno();
        if (p.seccomp_len)
            install_seccomp(&p);
    }
    if (err_fd > 3)
        syscall(SYS_close_range, 3, err_fd - 1, 0);
    syscall(SYS_close_range, err_fd + 1, ~0u, 0);
    execve(path, p.args.items, envp);
    fail("exec %s: %s", path, errtext(errno));
}
