// The probes' sockets: a listener and upstream connections on 127.0.0.1, TCP_NODELAY as
// pgrouter sets it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in loopback(const char *port)
{
	struct sockaddr_in at = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	at.sin_port = htons(atoi(port));
	return at;
}

// A listening socket on 127.0.0.1:port, or -1.
static int listen_on(const char *port)
{
	struct sockaddr_in at = loopback(port);
	int one = 1, listener = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(listener, (void *)&at, sizeof at) || listen(listener, 1024)) {
		close(listener);
		return -1;
	}
	return listener;
}

// A connection to `upstream` (blocking), or -1.
static int connect_to(const struct sockaddr_in *upstream)
{
	int server = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(server, (const void *)upstream, sizeof *upstream)) {
		close(server);
		return -1;
	}
	return server;
}

static void no_delay(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}
