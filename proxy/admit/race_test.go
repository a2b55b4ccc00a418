//go:build race

package admit_test

// raceEnabled is true under the race detector, which inflates memory and
// time: bounds measured on them are skipped.
const raceEnabled = true
