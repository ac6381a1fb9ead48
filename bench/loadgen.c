/*
 * loadgen: the closed-loop TCP load generator of the netpoll benchmark.
 *
 * Modes:
 *   echo    each connection sends SIZE bytes and waits for the same SIZE bytes back.
 *   frames  each connection sends a frame (4-byte big-endian length, then SIZE bytes) and
 *           waits for the whole framed reply, which must carry the same payload.
 *   idle    opens CONNS connections, prints one JSON line, holds them until stdin closes
 *           or HOLD seconds pass, then resets them (no TIME_WAIT left behind).
 *
 * With --tls, every connection speaks TLS (OpenSSL, the library's default protocol and
 * cipher choice, no certificate check: the benchmark's servers use a throwaway
 * certificate). The handshake is done, blocking, before the run starts; in idle mode each
 * held connection has finished its handshake. TLS needs a build with -DLOADGEN_TLS and
 * -lssl -lcrypto; `loadgen --features` prints "tls" when this build has it.
 *
 * One thread, level-triggered epoll, non-blocking sockets. A run is a warm-up of WARMUP
 * seconds (not measured) followed by DURATION measured seconds; both are bounded, and so
 * is the number of requests (MAX_REQUESTS). Latencies go into a log-linear histogram
 * (1.6% resolution). The result is one JSON line on stdout; errors are a JSON line with
 * "ok": false and exit status 1.
 *
 * Build: gcc -O2 -o loadgen loadgen.c
 *        gcc -O2 -DLOADGEN_TLS -o loadgen loadgen.c -lssl -lcrypto   (with --tls)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

enum mode { MODE_ECHO, MODE_FRAMES, MODE_IDLE };

struct conn {
    int fd;
    int want_write;   /* registered for EPOLLOUT */
    size_t sent;      /* bytes of the current request sent */
    size_t received;  /* bytes of the current reply received */
    uint64_t started; /* ns, when the current request was started */
    unsigned char *reply;
    void *ssl;        /* SSL *, with --tls */
};

/* Histogram: values below 128 ns exact, then 64 buckets per power of two. */
#define SUB_BITS 7
#define HALF (1 << (SUB_BITS - 1))
#define NBUCKETS (64 * HALF)
static uint64_t hist[NBUCKETS];
static uint64_t hist_count, hist_max;
static double hist_sum;

static int bucket_of(uint64_t v) {
    if (v < (1u << SUB_BITS)) return (int)v;
    int e = 63 - __builtin_clzll(v);
    int shift = e - (SUB_BITS - 1);
    int b = shift * HALF + (int)(v >> shift);
    return b < NBUCKETS ? b : NBUCKETS - 1;
}

static uint64_t value_of(int b) {
    if (b < (1 << SUB_BITS)) return (uint64_t)b;
    int shift = b / HALF - 1;
    uint64_t top = (uint64_t)(b - shift * HALF);
    return (top << shift) + ((1ull << shift) >> 1);
}

static void record(uint64_t ns) {
    hist[bucket_of(ns)]++;
    hist_count++;
    hist_sum += (double)ns;
    if (ns > hist_max) hist_max = ns;
}

static double percentile_us(double p) {
    if (hist_count == 0) return 0.0;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)hist_count + 0.5);
    if (rank < 1) rank = 1;
    if (rank > hist_count) rank = hist_count;
    uint64_t seen = 0;
    for (int b = 0; b < NBUCKETS; b++) {
        seen += hist[b];
        if (seen >= rank) {
            uint64_t v = value_of(b);
            if (v > hist_max) v = hist_max;
            return (double)v / 1000.0;
        }
    }
    return (double)hist_max / 1000.0;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static const char *mode_name = "echo";

static void fail(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *c = msg; *c; c++)
        if (*c == '"' || *c == '\\' || *c == '\n') *c = ' ';
    printf("{\"ok\": false, \"mode\": \"%s\", \"error\": \"%s\"}\n", mode_name, msg);
    fflush(stdout);
    exit(1);
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --mode echo|frames|idle --port P [--host 127.0.0.1]\n"
            "               [--conns N] [--size BYTES] [--warmup S] [--duration S]\n"
            "               [--max-requests N] [--hold S] [--connect-timeout S] [--tls 1]\n"
            "       loadgen --features\n");
    exit(2);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* A blocking connect bounded by SO_SNDTIMEO, then switched to non-blocking. */
static int open_conn(const struct sockaddr_in *addr, double timeout_s, int nonblock) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) fail("socket: %s", strerror(errno));
    struct timeval tv = {(time_t)timeout_s, (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv); /* bounds a TLS handshake */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    if (nonblock) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void reset_close(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* --- TLS ------------------------------------------------------------------------------ */

static int use_tls;

#ifdef LOADGEN_TLS
static SSL_CTX *tls_ctx;

static const char *tls_error_text(void) {
    static char buf[256];
    unsigned long e = ERR_get_error();
    if (e == 0) return errno ? strerror(errno) : "connection closed";
    ERR_error_string_n(e, buf, sizeof buf);
    return buf;
}

static void tls_init(void) {
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx) fail("SSL_CTX_new: %s", tls_error_text());
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    /* A write may return after part of the buffer, and be retried from a later offset. */
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

/* The handshake on a blocking socket (bounded by its send/receive timeouts). */
static void *tls_connect(int fd, int index) {
    SSL *ssl = SSL_new(tls_ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1) fail("SSL_new: %s", tls_error_text());
    if (SSL_connect(ssl) != 1) fail("TLS handshake of connection %d: %s", index + 1, tls_error_text());
    return ssl;
}

static void tls_free(void *ssl) {
    if (ssl) SSL_free((SSL *)ssl);
}
#else
static void tls_init(void) { fail("this loadgen was built without TLS (needs libssl-dev)"); }
static void *tls_connect(int fd, int index) {
    (void)fd;
    (void)index;
    return NULL;
}
static void tls_free(void *ssl) { (void)ssl; }
#endif

/* Bytes sent (> 0), 0 when the socket would block (then *want_write says whether to wait
 * for EPOLLOUT), or -1 on error (errno set, or a TLS error already reported). */
static ssize_t conn_send(struct conn *c, const unsigned char *buf, size_t len, int *want_write) {
    *want_write = 0;
#ifdef LOADGEN_TLS
    if (c->ssl) {
        int n = SSL_write((SSL *)c->ssl, buf, len > 1u << 30 ? 1 << 30 : (int)len);
        if (n > 0) return n;
        int err = SSL_get_error((SSL *)c->ssl, n);
        if (err == SSL_ERROR_WANT_WRITE) {
            *want_write = 1;
            return 0;
        }
        if (err == SSL_ERROR_WANT_READ) return 0;
        fail("TLS send: %s", tls_error_text());
    }
#endif
    for (;;) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            *want_write = 1;
            return 0;
        }
        return -1;
    }
}

/* Bytes received (> 0), 0 when nothing more is ready now, or fails on a close or error. */
static ssize_t conn_recv(struct conn *c, unsigned char *buf, size_t len) {
#ifdef LOADGEN_TLS
    if (c->ssl) {
        int n = SSL_read((SSL *)c->ssl, buf, len > 1u << 30 ? 1 << 30 : (int)len);
        if (n > 0) return n;
        int err = SSL_get_error((SSL *)c->ssl, n);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return 0;
        if (err == SSL_ERROR_ZERO_RETURN) fail("the server closed a connection (close_notify)");
        fail("TLS receive: %s", tls_error_text());
    }
#endif
    for (;;) {
        ssize_t r = recv(c->fd, buf, len, 0);
        if (r > 0) return r;
        if (r == 0) fail("the server closed a connection");
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        fail("recv: %s", strerror(errno));
    }
}

static int run_idle(const struct sockaddr_in *addr, int nconns, double hold_s, double timeout_s) {
    int *fds = calloc((size_t)nconns, sizeof *fds);
    void **ssls = calloc((size_t)nconns, sizeof *ssls);
    if (!fds || !ssls) fail("out of memory");
    uint64_t t0 = now_ns();
    int opened = 0;
    for (; opened < nconns; opened++) {
        fds[opened] = open_conn(addr, timeout_s, 0);
        if (fds[opened] < 0) {
            int err = errno;
            for (int i = 0; i < opened; i++) reset_close(fds[i]);
            fail("connection %d of %d: %s", opened + 1, nconns, strerror(err));
        }
        if (use_tls) ssls[opened] = tls_connect(fds[opened], opened);
    }
    double connect_s = (double)(now_ns() - t0) / 1e9;
    printf("{\"ok\": true, \"mode\": \"idle\", \"conns\": %d, \"connect_s\": %.3f}\n", opened,
           connect_s);
    fflush(stdout);
    /* Hold until stdin closes (or says anything) or the hold time passes. */
    struct pollfd pfd = {0, POLLIN, 0};
    uint64_t until = now_ns() + (uint64_t)(hold_s * 1e9);
    for (;;) {
        uint64_t now = now_ns();
        if (now >= until) break;
        int ms = (int)((until - now) / 1000000ull) + 1;
        int r = poll(&pfd, 1, ms);
        if (r > 0) break;
        if (r < 0 && errno != EINTR) break;
    }
    for (int i = 0; i < opened; i++) {
        tls_free(ssls[i]);
        reset_close(fds[i]);
    }
    free(fds);
    free(ssls);
    return 0;
}

static unsigned char *request;
static size_t request_len;

static int epfd;

static void set_events(struct conn *c, int want_write) {
    if (c->want_write == want_write) return;
    /* Keep reading while a send is blocked: a server may answer part of a large echo
     * before it has all of it, and must not stall on a full buffer toward us. */
    struct epoll_event ev = {.events = want_write ? (EPOLLIN | EPOLLOUT) : EPOLLIN,
                             .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) fail("epoll_ctl: %s", strerror(errno));
    c->want_write = want_write;
}

/* Send what is left of the current request; 0 when done or blocked, -1 on error. */
static int pump_send(struct conn *c) {
    while (c->sent < request_len) {
        int want_write;
        ssize_t n = conn_send(c, request + c->sent, request_len - c->sent, &want_write);
        if (n < 0) return -1;
        if (n == 0) {
            set_events(c, want_write);
            return 0;
        }
        c->sent += (size_t)n;
    }
    set_events(c, 0);
    return 0;
}

static int start_request(struct conn *c, uint64_t now) {
    c->sent = 0;
    c->received = 0;
    c->started = now;
    return pump_send(c);
}

int main(int argc, char **argv) {
    enum mode mode = MODE_ECHO;
    const char *host = "127.0.0.1";
    int port = 0, nconns = 50;
    long size = 128;
    double warmup = 1.0, duration = 5.0, hold = 60.0, connect_timeout = 5.0;
    uint64_t max_requests = 100000000ull;

    if (argc == 2 && !strcmp(argv[1], "--features")) {
#ifdef LOADGEN_TLS
        puts("tls");
#else
        puts("");
#endif
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--mode")) {
            mode_name = v;
            if (!strcmp(v, "echo")) mode = MODE_ECHO;
            else if (!strcmp(v, "frames")) mode = MODE_FRAMES;
            else if (!strcmp(v, "idle")) mode = MODE_IDLE;
            else usage();
        } else if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--conns")) nconns = atoi(v);
        else if (!strcmp(a, "--size")) size = atol(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--hold")) hold = atof(v);
        else if (!strcmp(a, "--connect-timeout")) connect_timeout = atof(v);
        else if (!strcmp(a, "--max-requests")) max_requests = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--tls")) use_tls = atoi(v) != 0;
        else usage();
    }
    if (port <= 0 || port > 65535 || nconns <= 0 || size < 1 || size > (64l << 20) ||
        warmup < 0 || duration <= 0 || duration > 3600 || warmup > 3600 || hold < 0 ||
        hold > 3600 || connect_timeout <= 0)
        usage();

    raise_nofile();
    if (use_tls) tls_init();
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) fail("bad host %s", host);

    if (mode == MODE_IDLE) return run_idle(&addr, nconns, hold, connect_timeout);

    size_t header = mode == MODE_FRAMES ? 4 : 0;
    request_len = header + (size_t)size;
    request = malloc(request_len);
    if (!request) fail("out of memory");
    if (header) {
        request[0] = (unsigned char)(size >> 24);
        request[1] = (unsigned char)(size >> 16);
        request[2] = (unsigned char)(size >> 8);
        request[3] = (unsigned char)size;
    }
    for (size_t i = header; i < request_len; i++) request[i] = (unsigned char)('a' + i % 26);
    /* Both modes expect the request's bytes back: an echo, or a frame of the same payload. */

    epfd = epoll_create1(0);
    if (epfd < 0) fail("epoll_create1: %s", strerror(errno));
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    if (!conns) fail("out of memory");
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        c->fd = open_conn(&addr, connect_timeout, !use_tls);
        if (c->fd < 0) fail("connect to %s:%d: %s", host, port, strerror(errno));
        if (use_tls) {
            c->ssl = tls_connect(c->fd, i);
            fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        }
        c->reply = malloc(request_len);
        if (!c->reply) fail("out of memory");
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) fail("epoll_ctl: %s", strerror(errno));
    }

    uint64_t begin = now_ns();
    uint64_t measure_from = begin + (uint64_t)(warmup * 1e9);
    uint64_t measure_until = measure_from + (uint64_t)(duration * 1e9);
    uint64_t last_progress = begin, measured = 0, total = 0;
    double cpu_at_start = 0.0;
    int measuring = 0;
    for (int i = 0; i < nconns; i++)
        if (start_request(&conns[i], begin) < 0) fail("send: %s", strerror(errno));

    struct epoll_event events[256];
    uint64_t now = begin;
    while (now < measure_until && total < max_requests) {
        int timeout_ms = 100;
        int n = epoll_wait(epfd, events, 256, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail("epoll_wait: %s", strerror(errno));
        }
        now = now_ns();
        if (!measuring && now >= measure_from) {
            measuring = 1;
            cpu_at_start = cpu_seconds();
        }
        for (int k = 0; k < n; k++) {
            struct conn *c = events[k].data.ptr;
            if ((events[k].events & EPOLLOUT) && pump_send(c) < 0)
                fail("send: %s", strerror(errno));
            if (!(events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            if (c->sent < request_len && pump_send(c) < 0) fail("send: %s", strerror(errno));
            for (;;) {
                ssize_t r = conn_recv(c, c->reply + c->received, request_len - c->received);
                if (r == 0) break;
                c->received += (size_t)r;
                if (c->received < request_len) continue;
                if (c->sent < request_len) fail("reply before the whole request was sent");
                if (memcmp(c->reply, request, request_len) != 0) fail("wrong reply content");
                total++;
                last_progress = now;
                if (now >= measure_from && now < measure_until) {
                    record(now - c->started);
                    measured++;
                }
                if (now < measure_until && total < max_requests &&
                    start_request(c, now) < 0)
                    fail("send: %s", strerror(errno));
                break;
            }
        }
        if (now - last_progress > 5000000000ull) fail("no reply for 5 s (server stalled)");
    }
    double elapsed = (double)((now < measure_until ? now : measure_until) - measure_from) / 1e9;
    double cpu = measuring ? cpu_seconds() - cpu_at_start : 0.0;
    if (!measuring || elapsed <= 0) fail("the run ended before the measured phase");
    printf("{\"ok\": true, \"mode\": \"%s\", \"conns\": %d, \"size\": %ld, "
           "\"duration_s\": %.3f, \"requests\": %llu, \"rps\": %.1f, "
           "\"mean_us\": %.2f, \"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, "
           "\"p999_us\": %.2f, \"max_us\": %.2f, \"cpu_s\": %.3f, \"cpu_frac\": %.3f}\n",
           mode_name, nconns, size, elapsed, (unsigned long long)measured,
           (double)measured / elapsed, hist_count ? hist_sum / (double)hist_count / 1000.0 : 0.0,
           percentile_us(50), percentile_us(90), percentile_us(99), percentile_us(99.9),
           (double)hist_max / 1000.0, cpu, cpu / elapsed);
    fflush(stdout);
    for (int i = 0; i < nconns; i++) {
        tls_free(conns[i].ssl);
        close(conns[i].fd);
    }
    return 0;
}
