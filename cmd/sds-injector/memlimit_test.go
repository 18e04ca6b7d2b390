package main

import (
	"math"
	"os"
	"runtime/debug"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/go-logr/logr"
)

func TestSetMemoryLimit(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	cases := map[string]struct {
		env      map[string]string
		provider memlimit.Provider
		want     int64
	}{
		"90 % of the container limit": {provider: memlimit.Limit(256 << 20), want: 241591910},
		"GOMEMLIMIT wins":             {env: map[string]string{"GOMEMLIMIT": "100MiB"}, provider: memlimit.Limit(256 << 20), want: math.MaxInt64},
		"AUTOMEMLIMIT=off":            {env: map[string]string{"AUTOMEMLIMIT": "off"}, provider: memlimit.Limit(256 << 20), want: math.MaxInt64},
		"AUTOMEMLIMIT as a ratio":     {env: map[string]string{"AUTOMEMLIMIT": "0.5"}, provider: memlimit.Limit(256 << 20), want: 128 << 20},
		"no container limit":          {provider: func() (uint64, error) { return 0, memlimit.ErrNoLimit }, want: math.MaxInt64},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Setenv("GOMEMLIMIT", "")
			t.Setenv("AUTOMEMLIMIT", "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			if tc.env["AUTOMEMLIMIT"] == "" {
				// An empty AUTOMEMLIMIT is not a ratio: unset it.
				unsetenv(t, "AUTOMEMLIMIT")
			}
			debug.SetMemoryLimit(math.MaxInt64)
			setMemoryLimit(logr.Discard(), tc.provider)
			if got := debug.SetMemoryLimit(-1); got != tc.want {
				t.Errorf("Go memory limit = %d, want %d", got, tc.want)
			}
		})
	}
}

// unsetenv removes key for the rest of the test (t.Setenv restores it).
func unsetenv(t *testing.T, key string) {
	t.Helper()
	t.Setenv(key, "")
	if err := os.Unsetenv(key); err != nil {
		t.Fatal(err)
	}
}
