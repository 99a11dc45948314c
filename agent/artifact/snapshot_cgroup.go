package artifact

import (
	"bufio"
	"bytes"
	"strings"
)

// cgroupInfo is what a process's /proc/PID/cgroup says about where it runs.
type cgroupInfo struct {
	Path      string // the one path shown as cgroup_path; see parseCgroup
	Container containerRef
}

// containerRef identifies the container a process belongs to, as far as its
// cgroup path tells. Runtimes name cgroups by convention, not by contract,
// so an unrecognised layout leaves it empty rather than guessing.
type containerRef struct {
	ID        string // full container id as the runtime knows it
	Runtime   string // docker, containerd, cri-o, podman, lxc, ecs, kubernetes
	ECSTaskID string // ECS task id (EC2 launch type and Fargate)
	PodUID    string // Kubernetes pod UID
}

// parseCgroup reads /proc/PID/cgroup: "hierarchy-id:controllers:path" lines,
// one per v1 hierarchy plus "0::path" for the unified (v2) hierarchy.
//
// cgroup_path is the v2 path when it says anything (pure v2 hosts, and
// hybrid hosts whose runtime uses v2), else the name=systemd v1 path, else
// the first non-root v1 path: on a hybrid host the unified line is often
// "/" while the real placement is only visible in v1. The container is
// looked for in every line, v2 first, since a runtime may use any of them.
func parseCgroup(b []byte) cgroupInfo {
	var v2, systemd, firstV1 string
	var paths []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxSmallFile)
	for sc.Scan() {
		id, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		controllers, path, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		switch {
		case id == "0" && controllers == "":
			v2 = path
			paths = append([]string{path}, paths...)
			continue
		case controllers == "name=systemd":
			systemd = path
		case firstV1 == "" && path != "/" && path != "":
			firstV1 = path
		}
		paths = append(paths, path)
	}
	var info cgroupInfo
	switch {
	case v2 != "" && v2 != "/":
		info.Path = v2
	case systemd != "" && systemd != "/":
		info.Path = systemd
	case firstV1 != "":
		info.Path = firstV1
	case v2 != "":
		info.Path = v2
	default:
		info.Path = systemd
	}
	for _, p := range paths {
		if c := containerFromCgroupPath(p); c.ID != "" || c.ECSTaskID != "" {
			info.Container = c
			break
		}
	}
	return info
}

// scopeRuntimes maps the prefix of a systemd scope unit, as container
// runtimes name them under the systemd cgroup driver, to the runtime.
var scopeRuntimes = []struct{ prefix, runtime string }{
	{"docker-", "docker"},
	{"cri-containerd-", "containerd"},
	{"nerdctl-", "containerd"},
	{"crio-", "cri-o"},
	{"libpod-", "podman"},
}

// containerFromCgroupPath recognises the layouts of the common runtimes:
//
//	/system.slice/docker-<id>.scope                        docker, systemd driver
//	/docker/<id>                                           docker, cgroupfs driver
//	/kubepods.slice/.../kubepods-...-pod<uid>.slice/cri-containerd-<id>.scope
//	/kubepods/burstable/pod<uid>/<id>                      kubelet, cgroupfs driver
//	/machine.slice/libpod-<id>.scope/container             podman
//	/kubepods.slice/.../crio-<id>.scope                    cri-o
//	/ecs/<task-id>/<container-id>                          ECS on EC2 (v1) and Fargate
//	/ecstasks.slice/ecstasks-<task>.slice/docker-<id>.scope ECS on cgroup v2
//	/lxc.payload.<name>, /lxc/<name>                       LXC
//
// Conmon scopes (crio-conmon-, libpod-conmon-) are the runtime's monitor,
// not the container, and are not matched.
func containerFromCgroupPath(path string) containerRef {
	var c containerRef
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for i, seg := range segs {
		if strings.HasSuffix(seg, ".slice") {
			name := strings.TrimSuffix(seg, ".slice")
			if _, uid, ok := strings.Cut(name, "-pod"); ok && strings.HasPrefix(name, "kubepods") {
				c.PodUID = strings.ReplaceAll(uid, "_", "-")
			}
			for _, p := range []string{"ecstasks-", "ecs-"} {
				if task, ok := strings.CutPrefix(name, p); ok && task != "" {
					c.ECSTaskID = task
					c.Runtime = "ecs"
				}
			}
			continue
		}
		if uid, ok := strings.CutPrefix(seg, "pod"); ok && i > 0 && strings.HasPrefix(segs[0], "kubepods") && len(uid) >= 32 {
			c.PodUID = uid
			continue
		}
		if unit, ok := strings.CutSuffix(seg, ".scope"); ok {
			if strings.Contains(unit, "-conmon-") {
				continue
			}
			for _, sr := range scopeRuntimes {
				if id, ok := strings.CutPrefix(unit, sr.prefix); ok && isHexID(id) {
					c.ID, c.Runtime = id, sr.runtime
				}
			}
			continue
		}
		if name, ok := strings.CutPrefix(seg, "lxc.payload."); ok && name != "" {
			c.ID, c.Runtime = name, "lxc"
			continue
		}
		if i == 0 || !isContainerSeg(seg) {
			if i == 1 && segs[0] == "lxc" && seg != "" {
				c.ID, c.Runtime = seg, "lxc"
			}
			continue
		}
		switch parent := segs[0]; {
		case parent == "ecs" && i == 2:
			c.ECSTaskID, c.ID, c.Runtime = segs[1], seg, "ecs"
		case parent == "docker" && i == 1:
			c.ID, c.Runtime = seg, "docker"
		case strings.HasPrefix(parent, "kubepods") && isHexID(seg) && len(seg) == 64:
			// The cgroupfs driver does not say which CRI runtime.
			c.ID, c.Runtime = seg, "kubernetes"
		case isHexID(seg) && len(seg) == 64:
			// containerd without Kubernetes: /<namespace>/<id>.
			c.ID, c.Runtime = seg, "containerd"
		}
	}
	if c.ID == "" && c.ECSTaskID == "" {
		return containerRef{}
	}
	return c
}

// isContainerSeg admits the ids runtimes generate: hex (docker, containerd),
// and Fargate's "<task>-<number>".
func isContainerSeg(s string) bool {
	if len(s) < 12 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == '-') {
			return false
		}
	}
	return true
}

func isHexID(s string) bool {
	if len(s) < 12 || len(s) > 128 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
