// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// custody_tasks: a BPF iterator over every process, emitting what the
// links under /proc/PID (exe, cwd, root, ns/*) and /proc/PID/loginuid would
// say of it: eleven system calls per process replaced by one pass.
//
// A value the program cannot establish (a kernel thread's exe, an exiting
// process's namespaces) is left out of the present mask, and the agent
// reads that one through /proc, whose answer (often an error) is then the
// record's. CO-RE as in files.bpf.c.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define PAC __attribute__((preserve_access_index))

struct vfsmount {
	void *mnt_root;
} PAC;

struct path {
	struct vfsmount *mnt;
	void *dentry;
} PAC;

struct file {
	struct path f_path;
} PAC;

struct ns_common {
	unsigned int inum;
} PAC;

struct uts_namespace {
	struct ns_common ns;
} PAC;
struct ipc_namespace {
	struct ns_common ns;
} PAC;
struct mnt_namespace {
	struct ns_common ns;
} PAC;
struct net {
	struct ns_common ns;
} PAC;
struct cgroup_namespace {
	struct ns_common ns;
} PAC;
struct pid_namespace {
	struct ns_common ns;
} PAC;
struct user_namespace {
	struct ns_common ns;
} PAC;

struct nsproxy {
	struct uts_namespace *uts_ns;
	struct ipc_namespace *ipc_ns;
	struct mnt_namespace *mnt_ns;
	struct net *net_ns;
	struct cgroup_namespace *cgroup_ns;
} PAC;

struct upid {
	struct pid_namespace *ns;
} PAC;

struct pid {
	unsigned int level;
	struct upid numbers[1];
} PAC;

struct cred {
	struct user_namespace *user_ns;
} PAC;

struct mm_struct {
	struct file *exe_file;
} PAC;

struct fs_struct {
	struct path root;
	struct path pwd;
} PAC;

typedef struct {
	unsigned int val;
} kuid_t;

struct task_struct {
	int pid;
	int tgid;
	struct mm_struct *mm;
	struct pid *thread_pid;
	const struct cred *real_cred;
	struct fs_struct *fs;
	struct nsproxy *nsproxy;
	kuid_t loginuid;
} PAC;

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
} PAC;

struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
} PAC;

#define PATH_BUF 4096

// Bits of present, and the order of ns[] (agent/procbpf/tasks.go).
enum {
	NS_CGROUP,
	NS_IPC,
	NS_MNT,
	NS_NET,
	NS_PID,
	NS_USER,
	NS_UTS,
	NS_COUNT,
	HAVE_LOGINUID = NS_COUNT,
	HAVE_EXE,
	HAVE_CWD,
	HAVE_ROOT,
};

struct task_rec {
	__u32 tgid;
	__u32 present;
	__u32 ns[NS_COUNT];
	__u32 loginuid;
	__s32 exe_len; /* path lengths; < 0: -errno from d_path */
	__s32 cwd_len;
	__s32 root_len;
};

struct scratch {
	struct task_rec r;
	char exe[PATH_BUF];
	char cwd[PATH_BUF];
	char root[PATH_BUF];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

static __always_inline void set_ns(struct task_rec *r, int i, unsigned int inum)
{
	if (inum) {
		r->ns[i] = inum;
		r->present |= 1u << i;
	}
}

// path_len turns d_path's result (the length with the NUL, or -errno) into
// the record's: the length without the NUL, or -errno.
static __always_inline __s32 path_len(long n)
{
	if (n < 0)
		return n;
	return n > 0 ? n - 1 : 0;
}

SEC("iter/task")
int custody_tasks(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	__u32 zero = 0;
	struct scratch *s;
	struct nsproxy *nsp;
	struct pid *pid;
	struct mm_struct *mm;
	struct fs_struct *fs;
	struct file *exe;

	if (!task || task->pid != task->tgid)
		return 0;
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	__builtin_memset(&s->r, 0, sizeof(s->r));
	s->r.tgid = task->tgid;

	nsp = BPF_CORE_READ(task, nsproxy);
	if (nsp) {
		set_ns(&s->r, NS_CGROUP, BPF_CORE_READ(nsp, cgroup_ns, ns.inum));
		set_ns(&s->r, NS_IPC, BPF_CORE_READ(nsp, ipc_ns, ns.inum));
		set_ns(&s->r, NS_MNT, BPF_CORE_READ(nsp, mnt_ns, ns.inum));
		set_ns(&s->r, NS_NET, BPF_CORE_READ(nsp, net_ns, ns.inum));
		set_ns(&s->r, NS_UTS, BPF_CORE_READ(nsp, uts_ns, ns.inum));
	}
	// ns/pid is the namespace the process's pid lives in (its deepest).
	pid = BPF_CORE_READ(task, thread_pid);
	if (pid) {
		unsigned int level = BPF_CORE_READ(pid, level);
		struct upid *u = (void *)((char *)pid + bpf_core_field_offset(struct pid, numbers) +
					  (__u64)level * bpf_core_type_size(struct upid));
		struct pid_namespace *pns = NULL;
		bpf_probe_read_kernel(&pns, sizeof(pns), (char *)u + bpf_core_field_offset(struct upid, ns));
		if (pns)
			set_ns(&s->r, NS_PID, BPF_CORE_READ(pns, ns.inum));
	}
	set_ns(&s->r, NS_USER, BPF_CORE_READ(task, real_cred, user_ns, ns.inum));
	if (bpf_core_field_exists(task->loginuid)) {
		s->r.loginuid = BPF_CORE_READ(task, loginuid.val);
		s->r.present |= 1u << HAVE_LOGINUID;
	}

	// Direct loads, not BPF_CORE_READ: bpf_d_path takes only pointers the
	// verifier followed from the task itself.
	mm = task->mm;
	exe = mm ? mm->exe_file : NULL;
	fs = task->fs;
	if (exe)
		s->r.present |= 1u << HAVE_EXE;
	if (fs)
		s->r.present |= (1u << HAVE_CWD) | (1u << HAVE_ROOT);
	if (exe)
		s->r.exe_len = path_len(bpf_d_path(&exe->f_path, s->exe, sizeof(s->exe)));
	if (fs) {
		s->r.cwd_len = path_len(bpf_d_path(&fs->pwd, s->cwd, sizeof(s->cwd)));
		s->r.root_len = path_len(bpf_d_path(&fs->root, s->root, sizeof(s->root)));
	}
	bpf_seq_write(seq, &s->r, sizeof(s->r));
	if (s->r.exe_len > 0)
		bpf_seq_write(seq, s->exe, s->r.exe_len & (PATH_BUF - 1));
	if (s->r.cwd_len > 0)
		bpf_seq_write(seq, s->cwd, s->r.cwd_len & (PATH_BUF - 1));
	if (s->r.root_len > 0)
		bpf_seq_write(seq, s->root, s->r.root_len & (PATH_BUF - 1));
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
