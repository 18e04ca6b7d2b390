package main

import (
	"errors"
	"math"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/go-logr/logr"
)

// memoryLimitRatio is the share of the container's memory limit given to
// the Go runtime as its soft limit (GOMEMLIMIT): the garbage collector
// works harder as the heap nears it instead of letting the container be
// OOM-killed, and the rest is left for what the Go runtime does not count
// (the binary's pages, thread stacks outside the heap).
const memoryLimitRatio = 0.9

// setMemoryLimit sets the Go runtime's soft memory limit from the cgroup
// memory limit the server runs under, with automemlimit
// (github.com/KimMachineGun/automemlimit, maintained, used by many
// operators): it reads cgroup v2 memory.max or v1
// memory.limit_in_bytes. GOMEMLIMIT set in the environment wins, and
// AUTOMEMLIMIT=off (or a ratio such as 0.8) is honoured, as the library
// documents. Without a limit (or outside a cgroup) nothing changes.
func setMemoryLimit(log logr.Logger, provider memlimit.Provider) {
	limit, err := memlimit.Set(memlimit.WithRatio(memoryLimitRatio), memlimit.WithProvider(provider))
	switch {
	case errors.Is(err, memlimit.ErrNoLimit):
		log.V(1).Info("no container memory limit: the Go runtime's memory limit stays off")
	case err != nil:
		log.V(1).Info("the container memory limit could not be read: the Go runtime's memory limit stays as it is", "error", err.Error())
	case limit == math.MaxInt64:
		log.V(1).Info("no memory limit for the Go runtime")
	default:
		log.Info("Go runtime memory limit", "bytes", limit, "fromContainerLimitRatio", memoryLimitRatio)
	}
}
