//go:build tools

// Package tools records the kwok main package built by hack/build-tools.sh.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
