// Package artifactflags is the command-line shorthand for artifact
// parameters, shared by custody-agent collect and custodyctl collect so
// that both take the same flags: --path for file's path, --with-env for
// processes' with_env, and so on, and --param ARTIFACT.KEY=VALUE for every
// parameter without a shorthand.
package artifactflags

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"
)

type target struct{ artifact, key string }

type shorthand struct {
	flag    string
	usage   string
	boolean bool     // a switch that sets "true"
	targets []target // set on each of these that is requested
}

var shorthands = []shorthand{
	{flag: "path", usage: "path for the file artifact", targets: []target{{"file", "path"}}},
	{flag: "pid", usage: "pids (comma list) for the process_memory artifact", targets: []target{{"process_memory", "pid"}}},
	{flag: "with-env", boolean: true, usage: "processes: include each process's environment (secret-looking values redacted)",
		targets: []target{{"processes", "with_env"}}},
	{flag: "env-unredacted", boolean: true, usage: "processes: with --with-env, keep secret-looking values as they are",
		targets: []target{{"processes", "env_unredacted"}}},
	{flag: "sensitive", boolean: true, usage: "files: also collect password hashes (/etc/shadow, /etc/gshadow)",
		targets: []target{{"files", "sensitive"}}},
	{flag: "process-name", usage: "process_memory: capture every process whose name matches this regular expression",
		targets: []target{{"process_memory", "process_name"}}},
	{flag: "regions", usage: "process_memory: region classes to capture, comma list of all|anon,heap,stack,writable,exec,file",
		targets: []target{{"process_memory", "regions"}}},
	{flag: "freeze", boolean: true, usage: "process_memory: stop each process's threads while it is captured (always resumed)",
		targets: []target{{"process_memory", "freeze"}}},
	{flag: "max-process-bytes", usage: "process_memory: cap per process, e.g. 8GiB",
		targets: []target{{"process_memory", "max_process_bytes"}}},
	{flag: "max-total-bytes", usage: "process_memory: cap over all processes, e.g. 32GiB",
		targets: []target{{"process_memory", "max_total_bytes"}}},
	{flag: "memory-source", usage: "physical_memory: auto (kcore, then LiME), kcore or lime",
		targets: []target{{"physical_memory", "source"}}},
	{flag: "lime-dir", usage: "physical_memory: directory holding <kernel release>/lime.ko",
		targets: []target{{"physical_memory", "lime_dir"}}},
	{flag: "container", usage: "files and process_memory: the container (id, 12+ characters; files also take a pid in it) whose files or processes to capture",
		targets: []target{{"files", "container"}, {"process_memory", "container"}}},
}

// Set holds the flags' values once parsed.
type Set struct {
	strs   map[string]*string
	bools  map[string]*bool
	params *[]string
}

// Register adds the shorthands and --param to f.
func Register(f *pflag.FlagSet) *Set {
	s := &Set{strs: map[string]*string{}, bools: map[string]*bool{}}
	for _, sh := range shorthands {
		if sh.boolean {
			s.bools[sh.flag] = f.Bool(sh.flag, false, sh.usage)
		} else {
			s.strs[sh.flag] = f.String(sh.flag, "", sh.usage)
		}
	}
	s.params = f.StringArray("param", nil, "artifact parameter ARTIFACT.KEY=VALUE (repeatable)")
	return s
}

// Params returns the parameters of each requested artifact (every one has
// a map, possibly empty). A flag for an artifact that was not requested is
// an error that names the flag: it would otherwise be silently ignored.
func (s *Set) Params(artifacts []string) (map[string]map[string]string, error) {
	out := make(map[string]map[string]string, len(artifacts))
	for _, a := range artifacts {
		out[a] = map[string]string{}
	}
	for _, sh := range shorthands {
		var v string
		if sh.boolean {
			if !*s.bools[sh.flag] {
				continue
			}
			v = "true"
		} else if v = *s.strs[sh.flag]; v == "" {
			continue
		}
		var names []string
		applied := false
		for _, t := range sh.targets {
			names = append(names, t.artifact)
			if p, ok := out[t.artifact]; ok {
				p[t.key] = v
				applied = true
			}
		}
		if !applied {
			return nil, fmt.Errorf("--%s is a parameter of %s; add it to --artifacts", sh.flag, strings.Join(names, " or "))
		}
	}
	for _, kv := range *s.params {
		k, v, ok := strings.Cut(kv, "=")
		art, key, ok2 := strings.Cut(k, ".")
		if !ok || !ok2 || key == "" {
			return nil, fmt.Errorf("--param %q: want ARTIFACT.KEY=VALUE", kv)
		}
		p, requested := out[art]
		if !requested {
			return nil, fmt.Errorf("--param %q: %s is not in --artifacts", kv, art)
		}
		p[key] = v
	}
	return out, nil
}
