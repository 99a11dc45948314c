package procbpf

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// initPIDNamespace is the fixed inode of the initial PID namespace
// (PROC_PID_INIT_INO).
const initPIDNamespace = 0xEFFFFFFC

// kernelTypes shares the kernel's decoded BTF between the iterators loaded
// at the same time (a collection's processes and open_files scans run side
// by side): decoding it is most of a load's cost, tens of milliseconds and
// tens of megabytes. The last user lets it go, so a long-running agent
// does not keep it between collections.
var kernelTypes struct {
	mu    sync.Mutex
	users int
	cache *btf.Cache
}

func acquireKernelTypes() *btf.Cache {
	kernelTypes.mu.Lock()
	defer kernelTypes.mu.Unlock()
	if kernelTypes.users == 0 {
		kernelTypes.cache = btf.NewCache()
	}
	kernelTypes.users++
	return kernelTypes.cache
}

func releaseKernelTypes() {
	kernelTypes.mu.Lock()
	defer kernelTypes.mu.Unlock()
	if kernelTypes.users--; kernelTypes.users == 0 {
		kernelTypes.cache = nil
	}
}

// iterator is a loaded iterator program and one open iteration of it.
type iterator struct {
	coll *ebpf.Collection
	link *link.Iter
	rc   io.ReadCloser
}

// openIterator loads program prog (an iter/<target> program) from obj and
// starts an iteration.
func openIterator(procRoot string, obj []byte, prog, target string) (*iterator, error) {
	if err := supported(procRoot); err != nil {
		return nil, err
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK. Raised
	// here, for this process only, rather than through cilium/ebpf's
	// rlimit package, whose init creates a BPF map at every start of the
	// agent to find out whether it must. Where raising it is refused, a
	// newer kernel does not need it, and an older one says so at load.
	_ = unix.Setrlimit(unix.RLIMIT_MEMLOCK, &unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY})
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
	if err != nil {
		return nil, fmt.Errorf("bpf: %s program: %w", target, err)
	}
	cache := acquireKernelTypes()
	defer releaseKernelTypes()
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Cache: cache})
	if err != nil {
		return nil, fmt.Errorf("bpf: load %s program: %w", target, err)
	}
	l, err := link.AttachIter(link.IterOptions{Program: coll.Programs[prog]})
	if err != nil {
		coll.Close()
		return nil, fmt.Errorf("bpf: attach %s iterator: %w", target, err)
	}
	rc, err := l.Open()
	if err != nil {
		l.Close()
		coll.Close()
		return nil, fmt.Errorf("bpf: open %s iterator: %w", target, err)
	}
	return &iterator{coll: coll, link: l, rc: rc}, nil
}

func (it *iterator) close() error {
	err := it.rc.Close()
	it.link.Close()
	it.coll.Close()
	return err
}

// supported says why the iterator cannot stand in for procRoot, or nil.
func supported(procRoot string) error {
	target, err := os.Readlink(procRoot + "/self/ns/pid")
	if err != nil {
		return fmt.Errorf("bpf: pid namespace: %w", err)
	}
	if target != "pid:["+strconv.Itoa(initPIDNamespace)+"]" {
		return fmt.Errorf("bpf: %s is not the initial pid namespace's /proc (%s)", procRoot, target)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return fmt.Errorf("bpf: kernel BTF: %w", err)
	}
	return nil
}
