package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/custodyhq/custody/internal/pki"
)

// conn is how custodyctl reaches the collector. Each setting comes from a
// flag, else the environment, else the config file.
type conn struct {
	Collector  string `yaml:"collector"`
	CA         string `yaml:"ca"`
	Cert       string `yaml:"cert"`
	Key        string `yaml:"key"`
	ServerName string `yaml:"server_name"`
}

type connFlags struct {
	conn
	configPath string
}

func (c *connFlags) register(f *pflag.FlagSet) {
	f.StringVar(&c.Collector, "collector", "", "collector address host:port ($CUSTODY_COLLECTOR)")
	f.StringVar(&c.CA, "ca", "", "CA bundle that signed the collector ($CUSTODY_CA)")
	f.StringVar(&c.Cert, "cert", "", "responder certificate ($CUSTODY_CERT)")
	f.StringVar(&c.Key, "key", "", "responder key ($CUSTODY_KEY)")
	f.StringVar(&c.ServerName, "server-name", "", "name in the collector's certificate (default: host of --collector)")
	f.StringVar(&c.configPath, "config", "", "config file ($CUSTODY_CONFIG, default ~/.config/custody/custodyctl.yaml)")
}

// resolve applies flag > environment > config file precedence.
func (c *connFlags) resolve() (conn, error) {
	var file conn
	path := first(c.configPath, os.Getenv("CUSTODY_CONFIG"))
	explicit := path != ""
	if path == "" {
		if dir, err := os.UserConfigDir(); err == nil {
			path = filepath.Join(dir, "custody", "custodyctl.yaml")
		}
	}
	if path != "" {
		data, err := os.ReadFile(path)
		switch {
		case err == nil:
			dec := yaml.NewDecoder(bytes.NewReader(data))
			dec.KnownFields(true)
			if err := dec.Decode(&file); err != nil && !errors.Is(err, io.EOF) {
				return conn{}, fmt.Errorf("config %s: %w", path, err)
			}
		case explicit || !errors.Is(err, os.ErrNotExist):
			return conn{}, fmt.Errorf("config: %w", err)
		}
	}
	out := conn{
		Collector:  first(c.Collector, os.Getenv("CUSTODY_COLLECTOR"), file.Collector, "127.0.0.1:7443"),
		CA:         first(c.CA, os.Getenv("CUSTODY_CA"), file.CA),
		Cert:       first(c.Cert, os.Getenv("CUSTODY_CERT"), file.Cert),
		Key:        first(c.Key, os.Getenv("CUSTODY_KEY"), file.Key),
		ServerName: first(c.ServerName, os.Getenv("CUSTODY_SERVER_NAME"), file.ServerName),
	}
	for name, v := range map[string]string{"--ca": out.CA, "--cert": out.Cert, "--key": out.Key} {
		if v == "" {
			return conn{}, fmt.Errorf("no %s given (flag, environment or config file)", name)
		}
	}
	return out, nil
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// dial opens a mutual-TLS connection to the collector.
func (c conn) dial() (*grpc.ClientConn, error) {
	roots, err := pki.ReadCertPool(c.CA)
	if err != nil {
		return nil, err
	}
	keys, err := pki.LoadKeypair(c.Cert, c.Key)
	if err != nil {
		return nil, err
	}
	name := c.ServerName
	if name == "" {
		host, _, err := net.SplitHostPort(c.Collector)
		if err != nil {
			return nil, fmt.Errorf("collector address %q: %w", c.Collector, err)
		}
		name = host
	}
	return grpc.NewClient(c.Collector, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLSConfig(roots, name, keys))))
}
