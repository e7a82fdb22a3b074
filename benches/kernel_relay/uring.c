// A single-threaded TCP relay on io_uring, for measuring:
//   uring LISTEN UPSTREAM
// Per direction one recv, then one send of what it got, then the next recv; every completion
// reaped in one io_uring_enter with the next submissions. Loopback only.
#include <liburing.h>
#include "loopback.h"
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

enum { ACCEPT = 1, RECV, SEND };
#define FDS 65536
#define BUF 16384
static int peer[FDS], ended[FDS];
static char *buf[FDS];
static struct io_uring ring;

static struct io_uring_sqe *next_sqe(void)
{
	struct io_uring_sqe *s = io_uring_get_sqe(&ring);
	if (!s) {
		io_uring_submit(&ring);
		s = io_uring_get_sqe(&ring);
	}
	return s;
}

static void submit(struct io_uring_sqe *s, int op, int fd)
{
	io_uring_sqe_set_data64(s, ((unsigned long long)op << 32) | (unsigned)fd);
}

static void receive(int fd)
{
	struct io_uring_sqe *s = next_sqe();
	io_uring_prep_recv(s, fd, buf[fd], BUF, 0);
	submit(s, RECV, fd);
}

// The first direction to end shuts both sockets down; the second closes them.
static void end(int fd)
{
	int other = peer[fd];
	if (!ended[fd]) {
		ended[fd] = ended[other] = 1;
		shutdown(fd, SHUT_RDWR);
		shutdown(other, SHUT_RDWR);
	} else {
		close(fd);
		close(other);
	}
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: uring LISTEN_PORT UPSTREAM_PORT\n");
		return 2;
	}
	if (io_uring_queue_init(4096, &ring, 0)) {
		perror("uring: io_uring_queue_init");
		return 1;
	}
	struct sockaddr_in upstream = loopback(argv[2]);
	int listener = listen_on(argv[1]);
	if (listener < 0) {
		perror("uring: listen");
		return 1;
	}
	struct io_uring_sqe *s = next_sqe();
	io_uring_prep_multishot_accept(s, listener, NULL, NULL, 0);
	submit(s, ACCEPT, listener);
	for (;;) {
		io_uring_submit_and_wait(&ring, 1);
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&ring, head, cqe) {
			seen++;
			int op = cqe->user_data >> 32, fd = cqe->user_data & 0xffffffff, res = cqe->res;
			if (op == ACCEPT) {
				int client = res, server = client < 0 ? -1 : connect_to(&upstream);
				if (server < 0 || client >= FDS || server >= FDS) {
					close(client);
					close(server);
					continue;
				}
				no_delay(client);
				no_delay(server);
				peer[client] = server, peer[server] = client;
				ended[client] = ended[server] = 0;
				if (!buf[client])
					buf[client] = malloc(BUF);
				if (!buf[server])
					buf[server] = malloc(BUF);
				receive(client);
				receive(server);
			} else if (res <= 0) {
				end(fd);
			} else if (op == RECV) {
				struct io_uring_sqe *w = next_sqe();
				io_uring_prep_send(w, peer[fd], buf[fd], res, MSG_WAITALL);
				submit(w, SEND, fd);
			} else {
				receive(fd);
			}
		}
		io_uring_cq_advance(&ring, seen);
	}
}
