// The kernel's floor for a relay: a stream verdict program that sends every skb arriving on a
// relayed socket out of its peer (bpf_sk_redirect_hash, egress), with nothing else: no message
// framing, no fence, no counters. Whatever pgrouter's rules would add comes on top of this.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// The relayed sockets, by socket cookie.
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} socks SEC(".maps");

// A relayed socket's cookie -> its peer's cookie.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} peers SEC(".maps");

SEC("sk_skb/stream_verdict")
int verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u64 *peer = bpf_map_lookup_elem(&peers, &cookie);

	if (!peer)
		return SK_PASS;
	return bpf_sk_redirect_hash(skb, &socks, peer, 0);
}

char LICENSE[] SEC("license") = "GPL";
