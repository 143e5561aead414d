package main

import (
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"weave-compute.local/weave"
)

// The form is checked here against the chosen model's bounds, so the user
// gets the problem in words before anything is sent; the broker checks
// again (and its errors are shown the same way).

// formError names the field and what it must be.
type formError struct{ Field, Message string }

func (e *formError) Error() string { return e.Field + ": " + e.Message }

// formValues keeps what the user typed, to show the form again.
type formValues struct {
	Model, Prompt, Negative, Width, Height, Steps, Guidance, Seed, Scheduler, Batch string
}

func readForm(f url.Values) formValues {
	get := func(k string) string { return f.Get(k) }
	return formValues{
		Model: get("model"), Prompt: get("prompt"), Negative: get("negative_prompt"),
		Width: get("width"), Height: get("height"), Steps: get("steps"), Guidance: get("guidance"),
		Seed: get("seed"), Scheduler: get("scheduler"), Batch: get("batch"),
	}
}

// request turns the form into a GenerateRequest for one of models.
func (v formValues) request(models []weave.ModelInfo, tag string) (weave.GenerateRequest, *weave.ModelInfo, error) {
	var model *weave.ModelInfo
	for i := range models {
		if models[i].ID == v.Model {
			model = &models[i]
		}
	}
	if model == nil {
		return weave.GenerateRequest{}, nil, &formError{"model", "one of the listed models"}
	}
	b := model.Bounds
	req := weave.GenerateRequest{ModelID: model.ID, Batch: 1, Tag: &tag}
	var err error
	if req.Prompt, err = text("prompt", v.Prompt, b.MaxPromptLen); err != nil {
		return req, nil, err
	}
	if req.NegativePrompt, err = text("negative prompt", v.Negative, b.MaxNegativePromptLen); err != nil {
		return req, nil, err
	}
	// A field left empty takes the model's default, as every other field does.
	req.UseModelNegative = req.NegativePrompt == ""
	if req.Width, err = size("width", v.Width, b.MinWidth, b.MaxWidth); err != nil {
		return req, nil, err
	}
	if req.Height, err = size("height", v.Height, b.MinHeight, b.MaxHeight); err != nil {
		return req, nil, err
	}
	if req.Steps, err = number("steps", v.Steps, 1, b.MaxSteps); err != nil {
		return req, nil, err
	}
	if s := strings.TrimSpace(v.Guidance); s != "" {
		g, perr := strconv.ParseFloat(s, 32)
		if perr != nil || math.IsNaN(g) || math.IsInf(g, 0) || float32(g) < b.MinGuidance || float32(g) > b.MaxGuidance {
			return req, nil, &formError{"guidance", fmt.Sprintf("a number from %g to %g", b.MinGuidance, b.MaxGuidance)}
		}
		req.Guidance = weave.Ptr(float32(g))
	}
	if s := strings.TrimSpace(v.Seed); s != "" {
		seed, perr := strconv.ParseUint(s, 10, 64)
		if perr != nil {
			return req, nil, &formError{"seed", "a whole number from 0 to 18446744073709551615, or empty for a random one"}
		}
		req.Seed = &seed
	}
	if s := strings.TrimSpace(v.Scheduler); s != "" {
		sched, perr := weave.ParseScheduler(s)
		if perr != nil {
			return req, nil, &formError{"scheduler", "one of the listed schedulers"}
		}
		req.Scheduler = &sched
	}
	if batch, err := number("number of images", v.Batch, 1, b.MaxBatch); err != nil {
		return req, nil, err
	} else if batch != nil {
		req.Batch = *batch
	}
	return req, model, nil
}

// text checks a prompt: UTF-8, at most max bytes, no control characters
// but newline and tab. Browsers send a textarea's line breaks as CRLF;
// they become LF (the broker refuses CR).
func text(field, s string, max uint32) (string, error) {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	if !utf8.ValidString(s) {
		return "", &formError{field, "text in UTF-8"}
	}
	if uint64(len(s)) > uint64(max) {
		return "", &formError{field, fmt.Sprintf("at most %d bytes (it has %d)", max, len(s))}
	}
	for _, r := range s {
		if r != '\n' && r != '\t' && unicode.IsControl(r) {
			return "", &formError{field, "text without control characters (line breaks and tabs are fine)"}
		}
	}
	return s, nil
}

// number parses an optional whole number from lo to hi; empty is nil (the
// model's default).
func number(field, s string, lo, hi uint32) (*uint32, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || uint32(n) < lo || uint32(n) > hi {
		return nil, &formError{field, fmt.Sprintf("a whole number from %d to %d", lo, hi)}
	}
	v := uint32(n)
	return &v, nil
}

// size is number for a width or height: also a multiple of 8.
func size(field, s string, lo, hi uint32) (*uint32, error) {
	n, err := number(field, s, lo, hi)
	if err == nil && n != nil && *n%8 != 0 {
		err = &formError{field, fmt.Sprintf("a multiple of 8 from %d to %d", lo, hi)}
	}
	if err != nil {
		return nil, &formError{field, fmt.Sprintf("a multiple of 8 from %d to %d", lo, hi)}
	}
	return n, nil
}

func itoa(i int) string { return strconv.Itoa(i) }
