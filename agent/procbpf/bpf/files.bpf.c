// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// custody_files: a BPF iterator over every open file of every process,
// emitting what readlink(/proc/PID/fd/N) and /proc/PID/fdinfo/N would say
// of it, one binary record each, in one pass in the kernel instead of four
// system calls per descriptor.
//
// Only the fields used are declared, with preserve_access_index, so libbpf
// style CO-RE relocations fit them to the running kernel's BTF: one object
// serves every kernel with BTF, BPF iterators and bpf_d_path, on every
// little-endian architecture; where it does not load, the agent reads /proc.
// Build: make bpf (clang -target bpfel).

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define PAC __attribute__((preserve_access_index))

struct vfsmount {
	void *mnt_root;
} PAC;

struct mount {
	struct vfsmount mnt;
	int mnt_id;
} PAC;

struct path {
	struct vfsmount *mnt;
	void *dentry;
} PAC;

struct inode {
	unsigned long i_ino;
} PAC;

struct file {
	struct path f_path;
	struct inode *f_inode;
	unsigned int f_flags;
	long long f_pos;
} PAC;

struct fdtable {
	unsigned long *close_on_exec;
} PAC;

struct files_struct {
	struct fdtable *fdt;
} PAC;

struct ns_common {
	unsigned int inum;
} PAC;

struct net {
	struct ns_common ns;
} PAC;

struct nsproxy {
	struct net *net_ns;
} PAC;

struct task_struct {
	int pid;
	int tgid;
	struct files_struct *files;
	struct nsproxy *nsproxy;
	char comm[16];
} PAC;

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
} PAC;

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	__u32 fd;
	struct file *file;
} PAC;

#define O_CLOEXEC_FLAG 02000000 /* the same value on every architecture */
#define PATH_BUF 4096

// The record the Go side parses (agent/procbpf/files.go): little-endian,
// no padding, followed by path_len bytes of path when path_len > 0.
struct file_rec {
	__u32 tgid;
	__u32 fd;
	__u32 flags;
	__s32 mnt_id;
	__s64 pos;
	__u64 ino;
	__u32 netns;
	__s32 path_len; /* < 0: -errno from d_path */
	char comm[16]; /* /proc/PID/comm, NUL-padded */
};

struct scratch {
	struct file_rec r;
	char path[PATH_BUF];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

SEC("iter/task_file")
int custody_files(struct bpf_iter__task_file *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	__u32 zero = 0;
	struct scratch *s;
	unsigned long word = 0, *coe;
	__u32 fd = ctx->fd;
	long n;

	if (!task || !file)
		return 0;
	// /proc/PID/fd is the thread group leader's table: a thread that
	// unshared its files is not listed there, so not here either.
	if (task->pid != task->tgid)
		return 0;
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;

	s->r.tgid = task->tgid;
	s->r.fd = fd;
	s->r.flags = BPF_CORE_READ(file, f_flags);
	// fdinfo adds O_CLOEXEC from the table's close-on-exec bitmap.
	coe = BPF_CORE_READ(task, files, fdt, close_on_exec);
	if (coe && bpf_probe_read_kernel(&word, sizeof(word), coe + fd / (8 * sizeof(long))) == 0 &&
	    (word >> (fd % (8 * sizeof(long)))) & 1)
		s->r.flags |= O_CLOEXEC_FLAG;
	s->r.pos = BPF_CORE_READ(file, f_pos);
	s->r.ino = BPF_CORE_READ(file, f_inode, i_ino);
	{
		struct vfsmount *vm = BPF_CORE_READ(file, f_path.mnt);
		struct mount *m = (void *)((char *)vm - bpf_core_field_offset(struct mount, mnt));
		s->r.mnt_id = BPF_CORE_READ(m, mnt_id);
	}
	s->r.netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
	__builtin_memset(s->r.comm, 0, sizeof(s->r.comm));
	bpf_core_read_str(s->r.comm, sizeof(s->r.comm), &task->comm);

	n = bpf_d_path(&file->f_path, s->path, sizeof(s->path));
	if (n < 0) {
		s->r.path_len = n;
		n = 0;
	} else {
		n = n > 0 ? n - 1 : 0; /* d_path's length counts the NUL */
		s->r.path_len = n;
	}
	if (n > PATH_BUF)
		n = PATH_BUF;
	bpf_seq_write(seq, s, sizeof(s->r) + n);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
