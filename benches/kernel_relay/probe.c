// A single-threaded TCP relay for measuring, in two modes:
//   probe LISTEN UPSTREAM epoll     every byte read and written here (epoll, recv, send)
//   probe LISTEN UPSTREAM sockmap   the login read and written here; from the server's first
//                                   ReadyForQuery on, both sockets in relay.bpf.o's sockhash,
//                                   so the kernel relays and this process only sees the end.
// Loopback only; no error handling beyond what a benchmark needs.
#define _GNU_SOURCE
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "loopback.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define FDS 65536
static int peer[FDS], is_server[FDS], in_kernel[FDS];
static int socks_map = -1, peers_map = -1;

static unsigned long long cookie(int fd)
{
	unsigned long long c = 0;
	socklen_t l = sizeof c;
	getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &l);
	return c;
}

static int load(const char *object)
{
	struct bpf_object *o = bpf_object__open_file(object, NULL);
	if (!o || bpf_object__load(o))
		return -1;
	socks_map = bpf_object__find_map_fd_by_name(o, "socks");
	peers_map = bpf_object__find_map_fd_by_name(o, "peers");
	int prog = bpf_program__fd(bpf_object__find_program_by_name(o, "verdict"));
	return bpf_prog_attach(prog, socks_map, BPF_SK_SKB_VERDICT, 0);
}

// Hands a client and its server socket to the kernel. The server goes into the sockhash first:
// a verdict on the client's socket whose peer is not in it yet would drop the skb.
static void to_kernel(int client, int server)
{
	unsigned long long c = cookie(client), s = cookie(server), vc = client, vs = server;
	if (bpf_map_update_elem(peers_map, &c, &s, 0) || bpf_map_update_elem(peers_map, &s, &c, 0) ||
	    bpf_map_update_elem(socks_map, &s, &vs, 0) || bpf_map_update_elem(socks_map, &c, &vc, 0))
		fprintf(stderr, "probe: sockhash update: %s (the session stays in user space)\n", strerror(errno));
	in_kernel[client] = in_kernel[server] = 1;
}

static void watch(int ep, int fd)
{
	struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.fd = fd };
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: probe LISTEN_PORT UPSTREAM_PORT epoll|sockmap\n");
		return 2;
	}
	int kernel = !strcmp(argv[3], "sockmap");
	if (kernel && load(getenv("RELAY_BPF") ? getenv("RELAY_BPF") : "relay.bpf.o")) {
		perror("probe: loading relay.bpf.o");
		return 1;
	}
	struct sockaddr_in upstream = loopback(argv[2]);
	int listener = listen_on(argv[1]);
	if (listener < 0) {
		perror("probe: listen");
		return 1;
	}
	int ep = epoll_create1(0);
	struct epoll_event l = { .events = EPOLLIN, .data.fd = listener };
	epoll_ctl(ep, EPOLL_CTL_ADD, listener, &l);
	static char buf[65536];
	for (;;) {
		struct epoll_event events[64];
		int n = epoll_wait(ep, events, 64, -1);
		for (int i = 0; i < n; i++) {
			int fd = events[i].data.fd;
			if (fd == listener) {
				int client = accept(listener, NULL, NULL);
				int server = client < 0 ? -1 : connect_to(&upstream);
				if (server < 0 || client >= FDS || server >= FDS) {
					close(client);
					close(server);
					continue;
				}
				no_delay(client);
				no_delay(server);
				peer[client] = server, peer[server] = client;
				is_server[client] = 0, is_server[server] = 1;
				in_kernel[client] = in_kernel[server] = 0;
				watch(ep, client);
				watch(ep, server);
				continue;
			}
			// Non-blocking: in the kernel's hands, a readable socket's bytes may be
			// redirected before this read.
			ssize_t got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
			if (got < 0 && errno == EAGAIN)
				continue;
			if (got > 0) {
				if (send(peer[fd], buf, got, 0) != got)
					fprintf(stderr, "probe: short send\n");
				// The login is over at the server's ReadyForQuery ('Z', length 5).
				if (kernel && is_server[fd] && !in_kernel[fd] && got >= 6 && buf[got - 6] == 'Z')
					to_kernel(peer[fd], fd);
				continue;
			}
			int other = peer[fd];
			if (in_kernel[fd]) {
				unsigned long long a = cookie(fd), b = cookie(other);
				bpf_map_delete_elem(peers_map, &a);
				bpf_map_delete_elem(peers_map, &b);
			}
			close(fd);
			close(other);
		}
	}
}
