#!/usr/bin/env bash
# Installs what the S3 store's tests need: versitygw, the S3-compatible
# server they start on loopback (collector/store/s3/s3test). It goes where
# `go install` puts it ($GOBIN, else the first GOPATH's bin), which is where
# the tests look when it is not on PATH. The version is the one s3test pins.
set -euo pipefail
cd "$(dirname "$0")/../.."

version=$(sed -n 's/^const Version = "\(v[0-9.]*\)"$/\1/p' collector/store/s3/s3test/s3test.go)
[ -n "$version" ] || { echo "ci-deps: no versitygw version in s3test.go" >&2; exit 1; }

bindir=$(go env GOBIN)
[ -n "$bindir" ] || bindir=$(go env GOPATH | cut -d: -f1)/bin
bin=$bindir/versitygw

if [ -x "$bin" ] && go version -m "$bin" 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+github.com/versity/versitygw[[:space:]]+$version([[:space:]]|$)"; then
	echo "versitygw $version: $bin"
	exit 0
fi
echo "installing versitygw $version into $bindir"
# Outside the module, so that custody's go.mod is neither read nor touched.
(cd / && go install "github.com/versity/versitygw/cmd/versitygw@$version")
go version -m "$bin" | grep -E "^[[:space:]]+mod[[:space:]]+github.com/versity/versitygw" 
