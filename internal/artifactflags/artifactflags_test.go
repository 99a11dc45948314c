package artifactflags

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
)

func parse(t *testing.T, args ...string) *Set {
	t.Helper()
	f := pflag.NewFlagSet("collect", pflag.ContinueOnError)
	s := Register(f)
	if err := f.Parse(args); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParams(t *testing.T) {
	tests := []struct {
		args      []string
		artifacts []string
		want      map[string]map[string]string
		wantErr   string
	}{
		{nil, []string{"host"}, map[string]map[string]string{"host": {}}, ""},
		{[]string{"--with-env", "--env-unredacted"}, []string{"processes"},
			map[string]map[string]string{"processes": {"with_env": "true", "env_unredacted": "true"}}, ""},
		{[]string{"--sensitive", "--container", "0123456789ab"}, []string{"files", "process_memory"},
			map[string]map[string]string{"files": {"sensitive": "true", "container": "0123456789ab"}, "process_memory": {"container": "0123456789ab"}}, ""},
		{[]string{"--container", "4242"}, []string{"files"}, map[string]map[string]string{"files": {"container": "4242"}}, ""},
		{[]string{"--process-name", "^nginx$", "--freeze", "--regions", "anon,heap", "--max-process-bytes", "1GiB", "--max-total-bytes", "2GiB"},
			[]string{"process_memory"}, map[string]map[string]string{"process_memory": {
				"process_name": "^nginx$", "freeze": "true", "regions": "anon,heap", "max_process_bytes": "1GiB", "max_total_bytes": "2GiB"}}, ""},
		{[]string{"--memory-source", "kcore", "--lime-dir", "/opt/lime"}, []string{"physical_memory", "kernel_symbols"},
			map[string]map[string]string{"physical_memory": {"source": "kcore", "lime_dir": "/opt/lime"}, "kernel_symbols": {}}, ""},
		{[]string{"--memory-source", "lime"}, []string{"processes"}, nil, "--memory-source is a parameter of physical_memory"},
		{[]string{"--path", "/var/tmp/x", "--param", "file.offset=0"}, []string{"file"},
			map[string]map[string]string{"file": {"path": "/var/tmp/x", "offset": "0"}}, ""},
		{[]string{"--param", "files.globs=/a=b"}, []string{"files"}, map[string]map[string]string{"files": {"globs": "/a=b"}}, ""},
		{[]string{"--with-env"}, []string{"host"}, nil, "--with-env is a parameter of processes"},
		{[]string{"--container", "x"}, []string{"host"}, nil, "--container is a parameter of files or process_memory"},
		{[]string{"--pid", "1"}, []string{"processes"}, nil, "--pid is a parameter of process_memory"},
		{[]string{"--param", "file.path"}, []string{"file"}, nil, `--param "file.path": want ARTIFACT.KEY=VALUE`},
		{[]string{"--param", "file=x"}, []string{"file"}, nil, "want ARTIFACT.KEY=VALUE"},
		{[]string{"--param", "host.x=1"}, []string{"file"}, nil, "host is not in --artifacts"},
	}
	for _, tt := range tests {
		got, err := parse(t, tt.args...).Params(tt.artifacts)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%v on %v: error %v, want %q", tt.args, tt.artifacts, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v on %v: %v", tt.args, tt.artifacts, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%v on %v (-want +got):\n%s", tt.args, tt.artifacts, diff)
		}
	}
}
