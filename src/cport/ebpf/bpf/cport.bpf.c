// SPDX-License-Identifier: Apache-2.0
/*
 * cport eBPF enforcer: identity-to-port policy on tc ingress and egress of one interface.
 *
 * Per packet (see docs/ebpf.md):
 *   1. parse Ethernet → IPv4/IPv6 → TCP/UDP/SCTP ports (anything not IP passes untouched);
 *   2. read the active policy epoch (generation = epoch & 1; 0 = nothing realised: drop);
 *   3. a packet whose reversed 5-tuple is in conntrack is a reply of an allowed flow: pass;
 *   4. a forward packet of a tracked flow reuses the verdict cached in its conntrack entry
 *      while the epoch is unchanged (a grant-admitted flow re-checks its grant on expiry);
 *   5. otherwise decide as cport.engine.decide does: source and destination identity from
 *      the ipcache (LPM), the destination's ingress policy and the source's egress policy
 *      from the endpoints map, each looked up in the policy LPM trie (the peer's rows, then
 *      the wildcard peer's, then the policy's default entry), the stricter verdict wins;
 *      auth-required passes only with a live grant for (source identity, source address);
 *   6. denials, auth drops and audit verdicts (and new allowed flows, if configured) become
 *      rate-limited events on a ring buffer; allowed flows enter conntrack.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "cport.h"

#ifndef CPORT_IPCACHE_MAX
#define CPORT_IPCACHE_MAX 262144
#endif
#ifndef CPORT_ENDPOINTS_MAX
#define CPORT_ENDPOINTS_MAX 65536
#endif
#ifndef CPORT_POLICY_MAX
#define CPORT_POLICY_MAX 1048576
#endif
#ifndef CPORT_CT_MAX
#define CPORT_CT_MAX 131072
#endif
#ifndef CPORT_GRANTS_MAX
#define CPORT_GRANTS_MAX 65536
#endif

#define WORLD_ID 2
#define NSEC 1000000000ULL
#define CT_LIFETIME_TCP (21600 * NSEC)
#define CT_LIFETIME_OTHER (60 * NSEC)
#define CT_LIFETIME_CLOSING (10 * NSEC)
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_RST 0x04
#define IPPROTO_ICMPV6_ 58

/* A passed packet goes on to the next tc filter, if any (TC_ACT_UNSPEC), rather than
 * ending classification (TC_ACT_OK): cport only ever removes packets. */
#define CPORT_PASS TC_ACT_UNSPEC

#define PARSE_OK 0
#define PARSE_PASS 1
#define PARSE_MALFORMED 2

/* -- maps: two generations of ipcache, endpoints and policy; the rest is shared ----------- */
#define GEN_MAPS(N)                                                                            \
	struct {                                                                               \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);                                           \
		__uint(max_entries, CPORT_IPCACHE_MAX);                                        \
		__uint(map_flags, BPF_F_NO_PREALLOC);                                          \
		__type(key, struct ipcache_key);                                               \
		__type(value, struct ipcache_value);                                           \
	} ipcache##N SEC(".maps");                                                             \
	struct {                                                                               \
		__uint(type, BPF_MAP_TYPE_HASH);                                               \
		__uint(max_entries, CPORT_ENDPOINTS_MAX);                                      \
		__uint(map_flags, BPF_F_NO_PREALLOC);                                          \
		__type(key, __u32);                                                            \
		__type(value, struct endpoint_value);                                          \
	} endpoints##N SEC(".maps");                                                           \
	struct {                                                                               \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);                                           \
		__uint(max_entries, CPORT_POLICY_MAX);                                         \
		__uint(map_flags, BPF_F_NO_PREALLOC);                                          \
		__type(key, struct policy_key);                                                \
		__type(value, struct policy_value);                                            \
	} policy##N SEC(".maps");

GEN_MAPS(0)
GEN_MAPS(1)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct active_value);
} active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct gen_meta);
} meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct attach_info);
} attachment SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config_value);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct cookie_value);
} cookies SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CPORT_GRANTS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct grant_key);
	__type(value, struct grant_value);
} grants SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CPORT_CT_MAX);
	__type(key, struct flow_key);
	__type(value, struct ct_value);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct policy_key);
	__type(value, struct row_stats);
} policy_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct evt_limit_key);
	__type(value, struct evt_limit_value);
} evt_limit SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct evt_budget);
} evt_budget SEC(".maps");

/* Scratch space for building an event (and the one place its layout enters BTF). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct verdict_event);
} evt_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counters);
} counters SEC(".maps");

/* -- helpers ------------------------------------------------------------------------------ */
#define COUNT(cnt, idx) ((cnt)->c[(idx)] += 1) /* per-CPU: no atomics needed */

struct decision {
	__u32 src_id;
	__u32 dst_id;
	__u32 ingress_cookie;
	__u32 egress_cookie;
	__u64 grant_expires_ns;
	struct policy_key ingress_row;
	struct policy_key egress_row;
	__u8 verdict;
	__u8 ingress_verdict;
	__u8 egress_verdict;
	__u8 flags;
};

static __always_inline int parse(struct __sk_buff *skb, struct flow_key *k, __u8 *tcp_flags)
{
	__be16 h_proto;
	__u32 l4;
	int first_fragment = 1;

	if (bpf_skb_load_bytes(skb, 12, &h_proto, sizeof(h_proto)))
		return PARSE_PASS;
	if (h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) || ip.ihl < 5)
			return PARSE_MALFORMED;
		/* IPv4-mapped: ::ffff:a.b.c.d (the 16-byte arrays start zeroed) */
		k->saddr[10] = 0xff;
		k->saddr[11] = 0xff;
		k->daddr[10] = 0xff;
		k->daddr[11] = 0xff;
		__builtin_memcpy(&k->saddr[12], &ip.saddr, 4);
		__builtin_memcpy(&k->daddr[12], &ip.daddr, 4);
		k->protocol = ip.protocol;
		l4 = ETH_HLEN + ip.ihl * 4;
		/* later fragments carry no ports: they are decided as port 0 */
		if (bpf_ntohs(ip.frag_off) & 0x1fff)
			first_fragment = 0;
	} else if (h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			return PARSE_MALFORMED;
		__builtin_memcpy(k->saddr, &ip6.saddr, 16);
		__builtin_memcpy(k->daddr, &ip6.daddr, 16);
		k->protocol = ip6.nexthdr;
		l4 = ETH_HLEN + sizeof(ip6);
		switch (ip6.nexthdr) {
		case 0: case 43: case 44: case 50: case 51: case 60: case 135: case 139: case 140:
		case 253: case 254:
			/* An extension header before the transport header: the ports are not where
			 * a port rule would look, and deciding it as "port 0" would let a TCP segment
			 * behind a Destination Options header past a deny rule. Fail closed. */
			return PARSE_MALFORMED;
		}
		if (ip6.nexthdr == IPPROTO_ICMPV6_) {
			__u8 type;

			if (bpf_skb_load_bytes(skb, l4, &type, 1))
				return PARSE_MALFORMED;
			if (type >= 133 && type <= 137) /* neighbour discovery, router solicitation */
				return PARSE_PASS;
		}
	} else {
		return PARSE_PASS;
	}
	if (first_fragment && (k->protocol == IPPROTO_TCP || k->protocol == IPPROTO_UDP ||
			       k->protocol == IPPROTO_SCTP)) {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)))
			return PARSE_MALFORMED;
		k->sport = ports[0];
		k->dport = ports[1];
		if (k->protocol == IPPROTO_TCP && bpf_skb_load_bytes(skb, l4 + 13, tcp_flags, 1))
			return PARSE_MALFORMED;
	}
	return PARSE_OK;
}

static __always_inline __u32 ipcache_identity(__u32 gen, const __u8 *addr)
{
	struct ipcache_key key = {.prefixlen = 128};
	struct ipcache_value *v;

	__builtin_memcpy(key.addr, addr, 16);
	v = gen ? bpf_map_lookup_elem(&ipcache1, &key) : bpf_map_lookup_elem(&ipcache0, &key);
	return v ? v->identity : WORLD_ID;
}

static __always_inline struct policy_value *policy_get(__u32 gen, struct policy_key *key)
{
	return gen ? bpf_map_lookup_elem(&policy1, key) : bpf_map_lookup_elem(&policy0, key);
}

/* One direction's verdict, as cport.engine's `lookup`: the peer's rows (exact port or a
 * range block: one LPM lookup), then the wildcard peer's, then the policy's default entry.
 * Fills `row` with the key of the entry that decided (for policy_stats). */
static __always_inline __u8 policy_verdict(__u32 gen, __u32 policy_id, __u32 peer, __u8 egress,
					   __u8 protocol, __be16 dport, struct policy_key *row,
					   __u32 *cookie)
{
	struct policy_key key = {
		.prefixlen = CPORT_POLICY_BITS,
		.policy_id = policy_id,
		.peer_id = peer,
		.egress = egress,
		.protocol = protocol,
		.dport = dport,
	};
	struct policy_value *v = policy_get(gen, &key);

	if (v && (v->flags & CPORT_PV_DEFAULT) && (v->flags & CPORT_PV_HAS_WILDCARD)) {
		struct policy_value *w;

		key.peer_id = 0;
		w = policy_get(gen, &key);
		if (w && !(w->flags & CPORT_PV_DEFAULT)) {
			v = w;
			peer = 0;
		}
	}
	if (!v) {
		/* a policy without its default entry: never written by cport; fail closed */
		row->prefixlen = 0;
		*cookie = 0;
		return CPORT_V_DENIED;
	}
	row->policy_id = policy_id;
	if (v->flags & CPORT_PV_DEFAULT) {
		row->prefixlen = CPORT_POLICY_DEFAULT_BITS;
		row->peer_id = 0;
		row->egress = 0;
		row->protocol = 0;
		row->dport = 0;
	} else {
		__u8 bits = v->port_bits & 0x1f;
		__u16 mask = bits >= 16 ? 0xffff : (__u16)(0xffff << (16 - bits));

		if (bits == 0)
			mask = 0;
		row->prefixlen = CPORT_POLICY_PORT_BASE + bits;
		row->peer_id = peer;
		row->egress = egress;
		row->protocol = protocol;
		row->dport = bpf_htons(bpf_ntohs(dport) & mask);
	}
	*cookie = v->cookie;
	return v->verdict;
}

/* cport.engine.decide for one packet, before grants. */
static __always_inline void evaluate(__u32 gen, const struct flow_key *fk, struct decision *d)
{
	struct endpoint_value *ep;
	__u32 in_policy = 0, eg_policy = 0;

	d->src_id = ipcache_identity(gen, fk->saddr);
	d->dst_id = ipcache_identity(gen, fk->daddr);
	ep = gen ? bpf_map_lookup_elem(&endpoints1, &d->dst_id)
		 : bpf_map_lookup_elem(&endpoints0, &d->dst_id);
	if (ep)
		in_policy = ep->ingress_policy;
	ep = gen ? bpf_map_lookup_elem(&endpoints1, &d->src_id)
		 : bpf_map_lookup_elem(&endpoints0, &d->src_id);
	if (ep)
		eg_policy = ep->egress_policy;
	d->ingress_verdict = CPORT_V_ALLOWED;
	d->egress_verdict = CPORT_V_ALLOWED;
	if (in_policy) {
		d->flags |= CPORT_D_INGRESS;
		d->ingress_verdict = policy_verdict(gen, in_policy, d->src_id, 0, fk->protocol,
						    fk->dport, &d->ingress_row, &d->ingress_cookie);
	}
	if (eg_policy) {
		d->flags |= CPORT_D_EGRESS;
		d->egress_verdict = policy_verdict(gen, eg_policy, d->dst_id, 1, fk->protocol,
						   fk->dport, &d->egress_row, &d->egress_cookie);
	}
	d->verdict = d->ingress_verdict > d->egress_verdict ? d->ingress_verdict
							     : d->egress_verdict;
}

/* auth-required: admitted with a live grant for (source identity, source address), as
 * cport.engine's _admit (audit stays audit). */
static __always_inline void apply_grant(const struct flow_key *fk, struct decision *d, __u64 now)
{
	struct grant_key gk = {.peer_id = d->src_id};
	struct grant_value *g;

	__builtin_memcpy(gk.addr, fk->saddr, 16);
	g = bpf_map_lookup_elem(&grants, &gk);
	if (!g || now >= g->expires_boot_ns)
		return;
	d->grant_expires_ns = g->expires_boot_ns;
	d->flags |= CPORT_D_AUTHENTICATED;
	d->verdict = (d->ingress_verdict == CPORT_V_AUDIT || d->egress_verdict == CPORT_V_AUDIT)
			     ? CPORT_V_AUDIT
			     : CPORT_V_ALLOWED;
}

static __always_inline void count_row(const struct policy_key *row, __u64 bytes)
{
	struct row_stats *s;

	if (!row->prefixlen)
		return;
	s = bpf_map_lookup_elem(&policy_stats, row);
	if (s) {
		s->packets += 1; /* per-CPU value: no atomics needed */
		s->bytes += bytes;
	} else {
		struct row_stats init = {.packets = 1, .bytes = bytes};

		bpf_map_update_elem(&policy_stats, row, &init, BPF_NOEXIST);
	}
}

static __always_inline void emit(struct __sk_buff *skb, struct counters *cnt,
				 const struct flow_key *fk, const struct decision *d, __u8 kind,
				 __u8 hook, __u32 epoch, __u64 now)
{
	__u32 zero = 0;
	struct config_value *cfg = bpf_map_lookup_elem(&config, &zero);
	struct evt_budget *budget = bpf_map_lookup_elem(&evt_budget, &zero);
	struct evt_limit_key lk = {};
	struct evt_limit_value *lv;
	struct verdict_event *ev;
	__u32 suppressed = 0;

	if (!cfg || !budget)
		return;
	/* the per-CPU budget: at most events_per_sec events a second on this CPU */
	if (now - budget->window_start_ns >= NSEC) {
		budget->window_start_ns = now;
		budget->count = 0;
	}
	if (budget->count >= cfg->events_per_sec) {
		COUNT(cnt, CPORT_C_EV_BUDGET);
		return;
	}
	/* the per-flow rate limit */
	__builtin_memcpy(lk.saddr, fk->saddr, 16);
	__builtin_memcpy(lk.daddr, fk->daddr, 16);
	lk.dport = fk->dport;
	lk.protocol = fk->protocol;
	lk.kind = kind;
	lv = bpf_map_lookup_elem(&evt_limit, &lk);
	if (lv) {
		if (now - lv->last_ns < cfg->event_interval_ns) {
			__sync_fetch_and_add(&lv->suppressed, 1);
			COUNT(cnt, CPORT_C_EV_LIMITED);
			return;
		}
		suppressed = lv->suppressed;
		lv->suppressed = 0;
		lv->last_ns = now;
	} else {
		struct evt_limit_value init = {.last_ns = now};

		bpf_map_update_elem(&evt_limit, &lk, &init, BPF_ANY);
	}
	ev = bpf_map_lookup_elem(&evt_scratch, &zero);
	if (!ev)
		return;
	ev->ts_boot_ns = now;
	__builtin_memcpy(ev->saddr, fk->saddr, 16);
	__builtin_memcpy(ev->daddr, fk->daddr, 16);
	ev->sport = fk->sport;
	ev->dport = fk->dport;
	ev->protocol = fk->protocol;
	ev->verdict = d->verdict;
	ev->kind = kind;
	ev->hook = hook;
	ev->src_id = d->src_id;
	ev->dst_id = d->dst_id;
	ev->ingress_cookie = d->ingress_cookie;
	ev->egress_cookie = d->egress_cookie;
	ev->epoch = epoch;
	ev->ifindex = skb->ifindex;
	ev->suppressed = suppressed;
	ev->flags = d->flags;
	ev->pad[0] = 0;
	ev->pad[1] = 0;
	ev->pad[2] = 0;
	if (bpf_ringbuf_output(&events, ev, sizeof(*ev), 0)) {
		COUNT(cnt, CPORT_C_EV_LOST);
		return;
	}
	budget->count += 1;
	COUNT(cnt, CPORT_C_EVENTS);
}

static __always_inline int ct_live(const struct ct_value *ct, __u8 protocol, __u64 now)
{
	__u64 life = CT_LIFETIME_OTHER;

	if (ct->flags & CPORT_CT_CLOSING)
		life = CT_LIFETIME_CLOSING;
	else if (protocol == IPPROTO_TCP)
		life = CT_LIFETIME_TCP;
	return now - ct->last_seen_ns < life;
}

static __always_inline void ct_touch(struct ct_value *ct, __u8 tcp_flags, __u64 now)
{
	/* refresh at most once a second: fewer writes to a shared cache line */
	if (now - ct->last_seen_ns > NSEC)
		ct->last_seen_ns = now;
	if (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		ct->flags |= CPORT_CT_CLOSING;
}

/* Cache a fresh decision of the flow in its conntrack entry (under `epoch`). */
static __always_inline void ct_refresh(struct ct_value *ct, const struct decision *d, __u32 epoch)
{
	ct->epoch = epoch;
	ct->src_id = d->src_id;
	ct->dst_id = d->dst_id;
	ct->ingress_cookie = d->ingress_cookie;
	ct->egress_cookie = d->egress_cookie;
	ct->verdict = d->verdict;
	ct->decision_flags = d->flags;
	ct->grant_expires_ns = d->grant_expires_ns;
	if (d->flags & CPORT_D_AUTHENTICATED)
		ct->flags |= CPORT_CT_AUTH;
	else
		ct->flags &= ~CPORT_CT_AUTH;
	ct->ingress_row = d->ingress_row;
	ct->egress_row = d->egress_row;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 hook)
{
	struct flow_key fk = {};
	struct flow_key rk = {};
	struct decision d = {};
	struct active_value *act;
	struct counters *cnt;
	struct ct_value *ct;
	__u8 tcp_flags = 0;
	__u32 zero = 0, epoch, gen;
	__u64 now;
	int rc;

	cnt = bpf_map_lookup_elem(&counters, &zero);
	if (!cnt)
		return TC_ACT_SHOT; /* cannot happen (array element 0); fail closed */
	rc = parse(skb, &fk, &tcp_flags);
	if (rc == PARSE_PASS) {
		COUNT(cnt, CPORT_C_PASSTHROUGH);
		return CPORT_PASS;
	}
	COUNT(cnt, CPORT_C_PACKETS);
	if (rc == PARSE_MALFORMED) {
		COUNT(cnt, CPORT_C_MALFORMED);
		return TC_ACT_SHOT;
	}
	act = bpf_map_lookup_elem(&active, &zero);
	if (!act || act->epoch == 0) {
		COUNT(cnt, CPORT_C_NO_POLICY);
		return TC_ACT_SHOT; /* fail closed */
	}
	epoch = act->epoch;
	gen = epoch & 1;
	now = bpf_ktime_get_boot_ns();

	/* a reply of a tracked (allowed) flow */
	__builtin_memcpy(rk.saddr, fk.daddr, 16);
	__builtin_memcpy(rk.daddr, fk.saddr, 16);
	rk.sport = fk.dport;
	rk.dport = fk.sport;
	rk.protocol = fk.protocol;
	ct = bpf_map_lookup_elem(&conntrack, &rk);
	if (ct && ct_live(ct, fk.protocol, now)) {
		if (ct->epoch != epoch || (ct->flags & CPORT_CT_AUTH)) {
			/* The policy changed since the flow was decided, or it was admitted by a
			 * grant: decide its forward direction again, so a policy change, a revoked
			 * or an expired grant stops replies (server push, one-way UDP) at once too,
			 * not only when the client next sends. */
			evaluate(gen, &rk, &d);
			if (d.verdict == CPORT_V_AUTH)
				apply_grant(&rk, &d, now);
			if (d.verdict == CPORT_V_DENIED || d.verdict == CPORT_V_AUTH) {
				bpf_map_delete_elem(&conntrack, &rk);
				COUNT(cnt, d.verdict == CPORT_V_DENIED ? CPORT_C_DENIED : CPORT_C_AUTH_DROP);
				emit(skb, cnt, &rk, &d,
				     d.verdict == CPORT_V_DENIED ? CPORT_EV_DENIED : CPORT_EV_AUTH, hook,
				     epoch, now);
				return TC_ACT_SHOT;
			}
			ct_refresh(ct, &d, epoch);
		}
		ct_touch(ct, tcp_flags, now);
		COUNT(cnt, CPORT_C_REPLY);
		return CPORT_PASS;
	}

	/* a forward packet */
	ct = bpf_map_lookup_elem(&conntrack, &fk);
	if (ct && !ct_live(ct, fk.protocol, now)) {
		bpf_map_delete_elem(&conntrack, &fk);
		ct = NULL;
	}
	if (ct && ct->epoch == epoch) {
		/* the verdict cached under this very policy epoch */
		d.src_id = ct->src_id;
		d.dst_id = ct->dst_id;
		d.ingress_cookie = ct->ingress_cookie;
		d.egress_cookie = ct->egress_cookie;
		d.verdict = ct->verdict;
		d.flags = ct->decision_flags;
		if (ct->flags & CPORT_CT_AUTH) {
			/* admitted by a grant: it must still be live (revocation and expiry apply
			 * to established flows at once) */
			d.ingress_verdict = CPORT_V_AUTH;
			d.egress_verdict = CPORT_V_ALLOWED;
			d.flags &= ~CPORT_D_AUTHENTICATED;
			d.verdict = CPORT_V_AUTH;
			apply_grant(&fk, &d, now);
			if (d.verdict == CPORT_V_AUTH) {
				bpf_map_delete_elem(&conntrack, &fk);
				COUNT(cnt, CPORT_C_AUTH_DROP);
				emit(skb, cnt, &fk, &d, CPORT_EV_AUTH, hook, epoch, now);
				return TC_ACT_SHOT;
			}
			d.verdict = ct->verdict; /* audit stays audit */
			ct->grant_expires_ns = d.grant_expires_ns;
		}
		ct_touch(ct, tcp_flags, now);
		COUNT(cnt, CPORT_C_CT_CACHED);
		count_row(&ct->ingress_row, skb->len);
		count_row(&ct->egress_row, skb->len);
		if (d.verdict == CPORT_V_AUDIT) {
			COUNT(cnt, CPORT_C_AUDIT);
			emit(skb, cnt, &fk, &d, CPORT_EV_AUDIT, hook, epoch, now);
		}
		COUNT(cnt, CPORT_C_ALLOWED);
		return CPORT_PASS;
	}

	evaluate(gen, &fk, &d);
	if (d.verdict == CPORT_V_AUTH)
		apply_grant(&fk, &d, now);
	count_row(&d.ingress_row, skb->len);
	count_row(&d.egress_row, skb->len);
	if (d.verdict == CPORT_V_DENIED || d.verdict == CPORT_V_AUTH) {
		__u8 kind = d.verdict == CPORT_V_DENIED ? CPORT_EV_DENIED : CPORT_EV_AUTH;

		if (ct)
			bpf_map_delete_elem(&conntrack, &fk);
		COUNT(cnt, d.verdict == CPORT_V_DENIED ? CPORT_C_DENIED : CPORT_C_AUTH_DROP);
		emit(skb, cnt, &fk, &d, kind, hook, epoch, now);
		return TC_ACT_SHOT;
	}
	if (ct) {
		/* re-decided under a new epoch: refresh the cache in place */
		ct_refresh(ct, &d, epoch);
		ct_touch(ct, tcp_flags, now);
	} else {
		struct ct_value nct = {
			.created_ns = now,
			.last_seen_ns = now,
			.grant_expires_ns = d.grant_expires_ns,
			.epoch = epoch,
			.src_id = d.src_id,
			.dst_id = d.dst_id,
			.ingress_cookie = d.ingress_cookie,
			.egress_cookie = d.egress_cookie,
			.verdict = d.verdict,
			.flags = (d.flags & CPORT_D_AUTHENTICATED) ? CPORT_CT_AUTH : 0,
			.decision_flags = d.flags,
			.ingress_row = d.ingress_row,
			.egress_row = d.egress_row,
		};

		if (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			nct.flags |= CPORT_CT_CLOSING;
		bpf_map_update_elem(&conntrack, &fk, &nct, BPF_ANY);
		COUNT(cnt, CPORT_C_CT_NEW);
		if (d.verdict == CPORT_V_ALLOWED) {
			struct config_value *cfg = bpf_map_lookup_elem(&config, &zero);

			if (cfg && (cfg->flags & CPORT_CFG_EMIT_ALLOWED))
				emit(skb, cnt, &fk, &d, CPORT_EV_ALLOWED, hook, epoch, now);
		}
	}
	if (d.verdict == CPORT_V_AUDIT) {
		COUNT(cnt, CPORT_C_AUDIT);
		emit(skb, cnt, &fk, &d, CPORT_EV_AUDIT, hook, epoch, now);
	}
	COUNT(cnt, CPORT_C_ALLOWED);
	return CPORT_PASS;
}

SEC("tc")
int cport_ingress(struct __sk_buff *skb)
{
	return handle(skb, CPORT_HOOK_INGRESS);
}

SEC("tc")
int cport_egress(struct __sk_buff *skb)
{
	return handle(skb, CPORT_HOOK_EGRESS);
}

char LICENSE[] SEC("license") = "Apache-2.0";
