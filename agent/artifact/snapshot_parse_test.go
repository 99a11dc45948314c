package artifact

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseCgroup(t *testing.T) {
	const id = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00998877665544332211"
	tests := []struct {
		name string
		in   string
		want cgroupInfo
	}{
		{"host v2", "0::/init.scope\n", cgroupInfo{Path: "/init.scope"}},
		{"root only", "0::/\n", cgroupInfo{Path: "/"}},
		{"docker systemd driver", "0::/system.slice/docker-" + id + ".scope\n",
			cgroupInfo{Path: "/system.slice/docker-" + id + ".scope", Container: containerRef{ID: id, Runtime: "docker"}}},
		{"docker cgroupfs v1", "12:memory:/docker/" + id + "\n11:cpu:/docker/" + id + "\n0::/\n",
			cgroupInfo{Path: "/docker/" + id, Container: containerRef{ID: id, Runtime: "docker"}}},
		{"hybrid prefers name=systemd", "4:memory:/x\n1:name=systemd:/system.slice/sshd.service\n0::/\n",
			cgroupInfo{Path: "/system.slice/sshd.service"}},
		{"kubernetes containerd systemd driver",
			"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b3a4c1e_2f1d_4e5a_9c7b_8d9e0f1a2b3c.slice/cri-containerd-" + id + ".scope\n",
			cgroupInfo{Path: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b3a4c1e_2f1d_4e5a_9c7b_8d9e0f1a2b3c.slice/cri-containerd-" + id + ".scope",
				Container: containerRef{ID: id, Runtime: "containerd", PodUID: "6b3a4c1e-2f1d-4e5a-9c7b-8d9e0f1a2b3c"}}},
		{"kubernetes cgroupfs driver", "3:pids:/kubepods/besteffort/pod6b3a4c1e-2f1d-4e5a-9c7b-8d9e0f1a2b3c/" + id + "\n",
			cgroupInfo{Path: "/kubepods/besteffort/pod6b3a4c1e-2f1d-4e5a-9c7b-8d9e0f1a2b3c/" + id,
				Container: containerRef{ID: id, Runtime: "kubernetes", PodUID: "6b3a4c1e-2f1d-4e5a-9c7b-8d9e0f1a2b3c"}}},
		{"cri-o", "0::/kubepods.slice/crio-" + id + ".scope\n",
			cgroupInfo{Path: "/kubepods.slice/crio-" + id + ".scope", Container: containerRef{ID: id, Runtime: "cri-o"}}},
		{"cri-o conmon is not the container", "0::/machine.slice/crio-conmon-" + id + ".scope\n",
			cgroupInfo{Path: "/machine.slice/crio-conmon-" + id + ".scope"}},
		{"podman", "0::/machine.slice/libpod-" + id + ".scope/container\n",
			cgroupInfo{Path: "/machine.slice/libpod-" + id + ".scope/container", Container: containerRef{ID: id, Runtime: "podman"}}},
		{"ECS on EC2, v1", "9:memory:/ecs/5a7b1c9d0e4f4a2b8c6d3e1f0a9b8c7d/" + id + "\n",
			cgroupInfo{Path: "/ecs/5a7b1c9d0e4f4a2b8c6d3e1f0a9b8c7d/" + id,
				Container: containerRef{ID: id, Runtime: "ecs", ECSTaskID: "5a7b1c9d0e4f4a2b8c6d3e1f0a9b8c7d"}}},
		{"ECS on cgroup v2", "0::/ecstasks.slice/ecstasks-5a7b1c9d0e4f4a2b8c6d3e1f0a9b8c7d.slice/docker-" + id + ".scope\n",
			cgroupInfo{Path: "/ecstasks.slice/ecstasks-5a7b1c9d0e4f4a2b8c6d3e1f0a9b8c7d.slice/docker-" + id + ".scope",
				Container: containerRef{ID: id, Runtime: "docker", ECSTaskID: "5a7b1c9d0e4f4a2b8c6d3e1f0a9b8c7d"}}},
		{"containerd without kubernetes", "0::/default/" + id + "\n",
			cgroupInfo{Path: "/default/" + id, Container: containerRef{ID: id, Runtime: "containerd"}}},
		{"lxc", "0::/lxc.payload.web01\n", cgroupInfo{Path: "/lxc.payload.web01", Container: containerRef{ID: "web01", Runtime: "lxc"}}},
		{"a user session is not a container", "0::/user.slice/user-1000.slice/session-3.scope\n",
			cgroupInfo{Path: "/user.slice/user-1000.slice/session-3.scope"}},
		{"garbage", "nonsense\n::\n", cgroupInfo{Path: ""}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, parseCgroup([]byte(tt.in))); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}

func TestParseEnvironRedaction(t *testing.T) {
	in := "PATH=/usr/bin\x00GITHUB_TOKEN=ghp_x\x00db_password=p\x00MY_API_KEY=k\x00EMPTY_SECRET=\x00" +
		"PWD=/srv\x00REDIS_URL=redis://:pw@cache:6379/0\x00PROXY=http://user:pass@proxy:3128 and http://host/x\x00NOEQUALS\x00"
	want := []string{
		"PATH=/usr/bin", "GITHUB_TOKEN=<redacted>", "db_password=<redacted>", "MY_API_KEY=<redacted>", "EMPTY_SECRET=",
		"PWD=/srv", "REDIS_URL=redis://:<redacted>@cache:6379/0", "PROXY=http://user:<redacted>@proxy:3128 and http://host/x", "NOEQUALS",
	}
	if diff := cmp.Diff(want, parseEnviron([]byte(in), false)); diff != "" {
		t.Errorf("redacted (-want +got):\n%s", diff)
	}
	if got := parseEnviron([]byte(in), true); got[1] != "GITHUB_TOKEN=ghp_x" || got[6] != "REDIS_URL=redis://:pw@cache:6379/0" {
		t.Errorf("unredacted = %q", got)
	}
	if got := parseEnviron(nil, false); got == nil || len(got) != 0 {
		t.Errorf("empty environ = %#v, want an empty list", got)
	}
}

func TestParseIDFile(t *testing.T) {
	got := parseIDFile([]byte("root:x:0:0:root:/root:/bin/bash\n# c\n+nis\nbroken\nx:x:notanumber:0\n" +
		"alice:x:1000:1000::/home/alice:/bin/sh\ntoor:x:0:0::/:/bin/sh\n"))
	want := map[uint64]string{0: "root", 1000: "alice"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestCapList(t *testing.T) {
	if diff := cmp.Diff([]string{"cap_chown", "cap_net_admin", "cap_sys_admin", "cap_63"}, capList(1|1<<12|1<<21|1<<63)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if got := capList(0); got == nil || len(got) != 0 {
		t.Errorf("capList(0) = %#v, want an empty list", got)
	}
}

func TestParseProcStat(t *testing.T) {
	// comm with ")" and a newline: the fields start after the last ")".
	in := "4242 (ev)il\n) R 1 4242 4242 0 -1 4194560 36434 9357543 0 409 84 198 23968 10133 20 -5 3 0 8640000 42688512 3060 18446744073709551615\n"
	got, err := parseProcStat([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := procStat{Comm: "ev)il\n", State: "R", PPID: 1, PGRP: 4242, UTime: 84, STime: 198, Nice: -5, NumThreads: 3, Starttime: 8640000}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, bad := range []string{"", "1 comm S 0", "1 (x) S 0 1 1", "1 (x) S x 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5", ")1 (x"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("parseProcStat(%q) succeeded", bad)
		}
	}
}

func TestParseProcStatus(t *testing.T) {
	in := "Name:\tev)il\\n\nUid:\t1000\t0\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nNSpid:\t777\t1\n" +
		"VmSize:\t   10740 kB\nVmRSS:\t    2800 kB\nCapEff:\t00000000a80425fb\nNewFieldFromTheFuture:\tx\n"
	got, err := parseProcStatus([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := procStatus{UIDs: [4]uint64{1000, 0, 1000, 1000}, GIDs: [4]uint64{1000, 1000, 1000, 1000}, HaveIDs: true,
		NSpid: []uint64{777, 1}, VmRSS: 2800 << 10, VmSize: 10740 << 10, CapEff: 0xa80425fb, HaveCapEff: true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// A kernel thread has no Vm lines and the ids still parse.
	if got, err := parseProcStatus([]byte("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n")); err != nil || got.VmRSS != 0 || got.HaveCapEff {
		t.Errorf("kernel thread status = %+v, %v", got, err)
	}
	if _, err := parseProcStatus([]byte("Name:\tx\nUid:\t1\t2\n")); err == nil {
		t.Error("status without complete ids succeeded")
	}
}
