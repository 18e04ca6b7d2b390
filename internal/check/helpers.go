package check

import (
	"fmt"
	"slices"
	"time"
)

// --- helpers and output -----------------------------------------------------

func failed(res Result, msg string) Result {
	res.Status, res.Message = StatusFail, msg
	return res
}

func skipped(res Result, msg string) Result {
	res.Status, res.Message = StatusSkip, msg
	return res
}

func worse(a, b Status) Status {
	rank := map[Status]int{StatusSkip: 0, StatusPass: 1, StatusWarn: 2, StatusFail: 3}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

func appendUnique(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

func roundDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "the past"
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	case d >= time.Hour:
		return d.Round(time.Hour).String()
	default:
		return d.Round(time.Second).String()
	}
}
