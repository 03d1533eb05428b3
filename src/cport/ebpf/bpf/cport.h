/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cport eBPF enforcer: map layouts and constants shared by the programs and, through BTF and
 * cport/ebpf/_layout.py, by user space. Every struct here has a ctypes twin in _layout.py;
 * tests/ebpf/test_layout.py compares their sizes and field offsets through the BTF of the
 * compiled object, and _layout.py's `#define` constants are compared with this file's text.
 * Change both sides together. No implicit padding anywhere: every hole is a named field.
 */
#ifndef CPORT_H
#define CPORT_H

#include <linux/types.h>

/* -- verdicts: ordered by strictness, so combining two directions is max() ----------------- */
#define CPORT_V_ALLOWED 0
#define CPORT_V_AUDIT 1
#define CPORT_V_AUTH 2 /* auth-required: allowed only with a live grant */
#define CPORT_V_DENIED 3

/* policy_value.flags */
#define CPORT_PV_DEFAULT 0x1      /* the policy's default entry (no row matched) */
#define CPORT_PV_HAS_WILDCARD 0x2 /* (default entry) the policy has rows for peer 0 */

/* ipcache_value.flags */
#define CPORT_IP_WORKLOAD 0x1 /* a workload address (table.addresses) */
#define CPORT_IP_CIDR 0x2     /* a CIDR identity's prefix (table.ipcache) */
#define CPORT_IP_BOUND 0x4    /* an address bound to a credential's identity (a grant) */

/* ct_value.flags */
#define CPORT_CT_AUTH 0x1    /* admitted through a grant: re-checked when the grant expires */
#define CPORT_CT_CLOSING 0x2 /* TCP FIN or RST seen: short lifetime */

/* verdict_event.kind */
#define CPORT_EV_ALLOWED 1   /* a new flow was allowed (only with CPORT_CFG_EMIT_ALLOWED) */
#define CPORT_EV_DENIED 2    /* dropped: deny row or default deny */
#define CPORT_EV_AUDIT 3     /* allowed, but an audit-mode policy would have denied it */
#define CPORT_EV_AUTH 4      /* dropped: auth-required and no live grant for the peer */

/* verdict_event.flags and decision flags */
#define CPORT_D_INGRESS 0x1       /* the destination's ingress policy was consulted */
#define CPORT_D_EGRESS 0x2        /* the source's egress policy was consulted */
#define CPORT_D_AUTHENTICATED 0x4 /* auth-required, admitted by a live grant */

/* verdict_event.hook */
#define CPORT_HOOK_INGRESS 0
#define CPORT_HOOK_EGRESS 1

/* config.flags */
#define CPORT_CFG_EMIT_ALLOWED 0x1 /* emit an event for every new allowed flow */

/* counters: indices into struct counters' array (one per-CPU element, one lookup a packet) */
#define CPORT_C_PACKETS 0     /* IP packets seen */
#define CPORT_C_PASSTHROUGH 1 /* not IP, or IPv6 neighbour discovery: passed untouched */
#define CPORT_C_REPLY 2       /* reply of a tracked flow: passed */
#define CPORT_C_ALLOWED 3     /* forward packets passed (allowed or audit) */
#define CPORT_C_DENIED 4      /* dropped by a deny row or default deny */
#define CPORT_C_AUTH_DROP 5   /* dropped: auth-required without a live grant */
#define CPORT_C_AUDIT 6       /* passed with verdict audit */
#define CPORT_C_CT_NEW 7      /* conntrack entries created */
#define CPORT_C_CT_CACHED 8   /* forward packets decided from the conntrack cache */
#define CPORT_C_EVENTS 9      /* events written to the ring buffer */
#define CPORT_C_EV_LOST 10    /* events lost: ring buffer full */
#define CPORT_C_EV_LIMITED 11 /* events suppressed by the per-flow rate limit */
#define CPORT_C_EV_BUDGET 12  /* events suppressed by the per-CPU budget */
#define CPORT_C_NO_POLICY 13  /* dropped: no policy realised yet */
#define CPORT_C_MALFORMED 14  /* dropped: IP header unreadable */
#define CPORT_C_MAX 16

struct counters {
	__u64 c[CPORT_C_MAX];
};

/* -- LPM key sizes ------------------------------------------------------------------------ */
#define CPORT_POLICY_BITS 96 /* policy_id(32) + peer_id(32) + egress(8) + protocol(8) + dport(16) */
#define CPORT_POLICY_PORT_BASE 80 /* prefixlen of a row matching every port */
#define CPORT_POLICY_DEFAULT_BITS 32 /* prefixlen of a policy's default entry */

/* ipcache<N>: LPM trie, address → identity. IPv4 is stored IPv4-mapped (::ffff:a.b.c.d), so
 * an IPv4 /p prefix has prefixlen 96 + p. */
struct ipcache_key {
	__u32 prefixlen;
	__u8 addr[16]; /* network order */
};

struct ipcache_value {
	__u32 identity;
	__u32 flags; /* CPORT_IP_* */
};

/* endpoints<N>: hash, identity → the policies governing it (0: no policy in that direction).
 * Key: __u32 identity. */
struct endpoint_value {
	__u32 ingress_policy;
	__u32 egress_policy;
};

/* policy<N>: LPM trie keyed like Cilium's policy map, with the endpoint policy's id in front
 * (cport shares one policy among every endpoint selected by the same rules). Rows have
 * prefixlen 80 + port prefix bits (96 for one port, 80 for every port); a port range is
 * split into prefix-aligned blocks. Peer 0 is the wildcard. Each policy also has one default
 * entry with prefixlen 32 (policy_id only) holding the verdict when no row matches. */
struct policy_key {
	__u32 prefixlen;
	__u32 policy_id;
	__u32 peer_id; /* host order; 0: any peer */
	__u8 egress;   /* 0 ingress, 1 egress */
	__u8 protocol; /* IPPROTO_* */
	__be16 dport;  /* network order */
};

struct policy_value {
	__u8 verdict;   /* CPORT_V_* */
	__u8 flags;     /* CPORT_PV_* */
	__u8 port_bits; /* the row's port prefix length (0-16); 0 for a default entry */
	__u8 pad;
	__u32 cookie; /* → the rules behind the row (cookies map; Python's Cell) */
};

/* policy_stats: per-CPU LRU hash, policy_key of a row (or default entry) → counters of
 * forward packets it decided. Gen-independent: the same row in both generations counts once. */
struct row_stats {
	__u64 packets;
	__u64 bytes;
};

/* cookies: hash, cookie → what the cookie stands for (user space only; read by the CLI). */
struct cookie_value {
	__u8 verdict; /* CPORT_V_* */
	__u8 reason;  /* index into _layout.REASONS */
	__u16 len;    /* bytes of text used */
	char text[252]; /* "kind/ns/name section[entry] mode; …", truncated */
};

/* grants: hash, (peer identity, peer address) → expiry on the boot clock. */
struct grant_key {
	__u32 peer_id;
	__u8 addr[16]; /* IPv4-mapped for IPv4 */
};

struct grant_value {
	__u64 expires_boot_ns; /* bpf_ktime_get_boot_ns() time after which the grant is dead */
};

/* conntrack: LRU hash of allowed flows, keyed by the forward 5-tuple. A packet whose reversed
 * tuple is here is a reply and passes; forward packets reuse the cached verdict while the
 * policy epoch is unchanged. */
struct flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 protocol;
	__u8 pad[3];
};

struct ct_value {
	__u64 created_ns;   /* boot clock */
	__u64 last_seen_ns; /* boot clock, refreshed at most once a second */
	__u64 grant_expires_ns; /* CPORT_CT_AUTH: the grant's expiry when last checked */
	__u32 epoch;  /* active.epoch when the verdict was computed */
	__u32 src_id;
	__u32 dst_id;
	__u32 ingress_cookie;
	__u32 egress_cookie;
	__u8 verdict; /* CPORT_V_ALLOWED or CPORT_V_AUDIT */
	__u8 flags;   /* CPORT_CT_* */
	__u8 decision_flags; /* CPORT_D_* */
	__u8 pad;
	struct policy_key ingress_row; /* rows that decided it (for policy_stats); prefixlen 0: none */
	struct policy_key egress_row;
};

/* active: array[1], the policy epoch. Generation = epoch & 1; 0 means nothing realised. */
struct active_value {
	__u32 epoch;
	__u32 pad;
};

/* meta: array[2], per generation, what user space realised there (user space only). */
struct gen_meta {
	__u64 revision;      /* Table.revision */
	__u64 synced_unix_ns;
	__u64 entries;       /* ipcache + endpoints + policy entries */
	__u64 epoch;         /* the epoch that activated this generation */
};

/* attachment: array[1], where the programs are attached and which build they are (user
 * space only). */
#define CPORT_AT_CREATED_HOOK 0x1 /* cport created the clsact qdisc (removed on detach) */

struct attach_info {
	char ifname[16];
	__u64 build_id;         /* first 8 bytes of the build's content hash */
	__u64 attached_unix_ns;
	__u32 ifindex;          /* 0: not attached */
	__u32 flags;            /* CPORT_AT_* */
	__u32 ingress_prog_id;
	__u32 egress_prog_id;
};

/* config: array[1]. */
struct config_value {
	__u64 event_interval_ns; /* per-flow event rate limit */
	__u32 flags;             /* CPORT_CFG_* */
	__u32 events_per_sec;    /* per-CPU event budget */
};

/* evt_limit: LRU hash, one flow's last event. "Flow" for rate limiting: source and
 * destination address, protocol, destination port and event kind (not the source port, so a
 * client reconnecting from new ports cannot multiply events). */
struct evt_limit_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 dport;
	__u8 protocol;
	__u8 kind;
};

struct evt_limit_value {
	__u64 last_ns;
	__u32 suppressed; /* events suppressed since last_ns */
	__u32 pad;
};

/* evt_budget: per-CPU array[1], the per-CPU event budget window. */
struct evt_budget {
	__u64 window_start_ns;
	__u64 count;
};

/* events: ring buffer of these. */
struct verdict_event {
	__u64 ts_boot_ns;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 protocol;
	__u8 verdict; /* CPORT_V_*, after grants (an admitted auth flow is ALLOWED or AUDIT) */
	__u8 kind;    /* CPORT_EV_* */
	__u8 hook;    /* CPORT_HOOK_* */
	__u32 src_id;
	__u32 dst_id;
	__u32 ingress_cookie; /* 0: ingress not governed */
	__u32 egress_cookie;  /* 0: egress not governed */
	__u32 epoch;
	__u32 ifindex;
	__u32 suppressed; /* events of this flow suppressed before this one */
	__u8 flags;       /* CPORT_D_* */
	__u8 pad[3];
};

#endif
