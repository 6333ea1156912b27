/*
 * null-fuse.c — the FUSE ceiling for tests/bench/run.sh: a regular file
 * whose reads return zeroes and whose writes succeed without going anywhere.
 *
 *     null-fuse [-t THREADS] [-s SIZE_MIB] FILE
 *
 * libfuse only mounts (fuse_session_mount on a regular file); the requests
 * are read from /dev/fuse and answered here, by THREADS threads each on its
 * own cloned fd (FUSE_DEV_IOC_CLONE), so the numbers measure the kernel's
 * FUSE path and nothing else.  Open replies carry FOPEN_DIRECT_IO |
 * FOPEN_PARALLEL_DIRECT_WRITES: without the latter the kernel serialises
 * writes on the inode lock and 4 writers run like 1.
 *
 * Runs until FILE is unmounted or SIGINT/SIGTERM arrives; prints one line
 * on stderr when mounted.  Not a test and not part of the build: run.sh
 * compiles it with cc.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#define MAX_WRITE   (1024 * 1024)
#define BUF_SIZE    (MAX_WRITE + 64 * 1024)   /* request header + payload */
#define MAX_THREADS 64

static uint64_t file_size;
static const char zeroes[MAX_WRITE];

/* One answer: the out header followed by an optional payload. */
static void reply(int fd, uint64_t unique, int error, const void *data, size_t len)
{
    struct fuse_out_header out = {
        .len = sizeof(out) + (error ? 0 : len),
        .error = -error,
        .unique = unique,
    };
    struct iovec iov[2] = {
        { .iov_base = &out, .iov_len = sizeof(out) },
        { .iov_base = (void *)data, .iov_len = error ? 0 : len },
    };
    /* ENOENT: the request was interrupted and is gone; nothing to do. */
    if (writev(fd, iov, len && !error ? 2 : 1) < 0 && errno != ENOENT) {
        perror("null-fuse: writev /dev/fuse");
    }
}

static void fill_attr(struct fuse_attr *attr)
{
    memset(attr, 0, sizeof(*attr));
    attr->ino = FUSE_ROOT_ID;
    attr->mode = S_IFREG | 0644;
    attr->nlink = 1;
    attr->size = file_size;
    attr->blocks = file_size / 512;
    attr->blksize = 4096;
}

static void do_init(int fd, uint64_t unique, const struct fuse_init_in *in)
{
    struct fuse_init_out out = {
        .major = FUSE_KERNEL_VERSION,
        .minor = in->minor < FUSE_KERNEL_MINOR_VERSION ? in->minor
                                                         : FUSE_KERNEL_MINOR_VERSION,
        .max_readahead = in->max_readahead,
        .flags = in->flags & (FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES),
        .max_background = 64,
        .congestion_threshold = 48,
        .max_write = MAX_WRITE,
        .max_pages = MAX_WRITE / 4096,
    };
    reply(fd, unique, 0, &out, sizeof(out));
}

static void do_getattr(int fd, uint64_t unique)
{
    struct fuse_attr_out out = { .attr_valid = 3600 };
    fill_attr(&out.attr);
    reply(fd, unique, 0, &out, sizeof(out));
}

static void do_open(int fd, uint64_t unique)
{
    struct fuse_open_out out = {
        .open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES,
    };
    reply(fd, unique, 0, &out, sizeof(out));
}

static void do_read(int fd, uint64_t unique, const struct fuse_read_in *in)
{
    uint64_t len = in->size;
    if (in->offset >= file_size) {
        len = 0;
    } else if (len > file_size - in->offset) {
        len = file_size - in->offset;
    }
    if (len > sizeof(zeroes)) {
        len = sizeof(zeroes);
    }
    reply(fd, unique, 0, zeroes, len);
}

static void do_write(int fd, uint64_t unique, const struct fuse_write_in *in)
{
    struct fuse_write_out out = { .size = in->size };
    reply(fd, unique, 0, &out, sizeof(out));
}

static void do_statfs(int fd, uint64_t unique)
{
    struct fuse_statfs_out out = { .st = { .bsize = 4096, .frsize = 4096,
                                           .namelen = 255 } };
    reply(fd, unique, 0, &out, sizeof(out));
}

/* Returns false when the connection is gone (unmounted). */
static bool serve_one(int fd, char *buf)
{
    ssize_t n = read(fd, buf, BUF_SIZE);
    if (n < 0) {
        if (errno == EINTR || errno == EAGAIN || errno == ENOENT) {
            return true;
        }
        if (errno != ENODEV) {
            perror("null-fuse: read /dev/fuse");
        }
        return false;
    }
    const struct fuse_in_header *in = (const void *)buf;
    const void *arg = buf + sizeof(*in);
    switch (in->opcode) {
    case FUSE_INIT:     do_init(fd, in->unique, arg); break;
    case FUSE_GETATTR:
    case FUSE_SETATTR:  do_getattr(fd, in->unique); break;
    case FUSE_OPEN:     do_open(fd, in->unique); break;
    case FUSE_READ:     do_read(fd, in->unique, arg); break;
    case FUSE_WRITE:    do_write(fd, in->unique, arg); break;
    case FUSE_STATFS:   do_statfs(fd, in->unique); break;
    case FUSE_FLUSH:
    case FUSE_RELEASE:
    case FUSE_FSYNC:
    case FUSE_FALLOCATE:
    case FUSE_DESTROY:  reply(fd, in->unique, 0, NULL, 0); break;
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_INTERRUPT: break;                 /* no reply expected */
    default:            reply(fd, in->unique, ENOSYS, NULL, 0); break;
    }
    return true;
}

static void *worker(void *opaque)
{
    int fd = (int)(intptr_t)opaque;
    char *buf = malloc(BUF_SIZE);
    if (!buf) {
        perror("null-fuse: malloc");
    } else {
        while (serve_one(fd, buf)) {
        }
    }
    free(buf);
    /* The mount went away: wake main, which unmounts and joins. */
    kill(getpid(), SIGTERM);
    return NULL;
}

static int clone_fuse_fd(int session_fd)
{
    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    uint32_t master = session_fd;
    if (fd < 0 || ioctl(fd, FUSE_DEV_IOC_CLONE, &master) < 0) {
        perror("null-fuse: cloning /dev/fuse fd");
        exit(1);
    }
    return fd;
}

static void usage(void)
{
    fprintf(stderr, "usage: null-fuse [-t THREADS] [-s SIZE_MIB] FILE\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int nthreads = 4, opt;
    file_size = 1024ull * 1024 * 1024;
    while ((opt = getopt(argc, argv, "t:s:")) != -1) {
        switch (opt) {
        case 't': nthreads = atoi(optarg); break;
        case 's': file_size = strtoull(optarg, NULL, 0) * 1024 * 1024; break;
        default: usage();
        }
    }
    if (optind != argc - 1 || nthreads < 1 || nthreads > MAX_THREADS) {
        usage();
    }
    const char *mountpoint = argv[optind];

    /* Signals go to main's sigwait only, never to the workers. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    char *fargv[] = { argv[0], NULL };
    struct fuse_args args = FUSE_ARGS_INIT(1, fargv);
    struct fuse_lowlevel_ops ops = { 0 };
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
    fuse_opt_free_args(&args);      /* option parsing may have copied them */
    if (!se || fuse_session_mount(se, mountpoint) != 0) {
        fprintf(stderr, "null-fuse: cannot mount %s\n", mountpoint);
        return 1;
    }
    int session_fd = fuse_session_fd(se);

    pthread_t threads[MAX_THREADS];
    for (int i = 0; i < nthreads; i++) {
        int fd = i == 0 ? session_fd : clone_fuse_fd(session_fd);
        pthread_create(&threads[i], NULL, worker, (void *)(intptr_t)fd);
    }
    fprintf(stderr, "null-fuse: %s mounted, %d threads\n", mountpoint, nthreads);

    int sig;
    sigwait(&sigs, &sig);
    fuse_session_unmount(se);       /* workers see ENODEV and return */
    for (int i = 0; i < nthreads; i++) {
        pthread_join(threads[i], NULL);
    }
    fuse_session_destroy(se);
    return 0;
}
