//! `sshmctl man` and `sshmctl completions`: the pages and scripts generated
//! from the clap definitions, plus what clap cannot know (FILES,
//! ENVIRONMENT, EXIT STATUS, EXAMPLES; model ids for `--model`).
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Sections appended to `sshmctl(1)`, in roff.
const EXTRA_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Success.
.TP
.B 1
Error (writing output, an unexpected answer, an internal error in the daemon).
.TP
.B 2
Usage error, including an output file that exists (use \fB\-\-force\fR) or
cannot be created.
.TP
.B 3
Cannot reach the daemon, or not allowed to (socket permissions, not in the
client group, an admin verb without the admin role).
.TP
.B 4
Busy, rate limited or draining: retry later.
.TP
.B 5
Invalid request: a flag out of range, an unknown model or job.
.TP
.B 6
The job failed: the worker crashed or could not start, the job timed out or
expired in the queue,
the model is quarantined or unavailable (its files cannot be used; an
administrator sees why in \fBsshmctl models\fR).
.TP
.B 7
\fBconfig check\fR found problems.
.TP
.B 130
Cancelled with Ctrl\-C (the job is cancelled on the daemon).
.SH ENVIRONMENT
.TP
.B WEAVE_SOCKET
The daemon socket, as \fB\-\-socket\fR.
.TP
.BR XDG_CONFIG_HOME ", " HOME
Where your own config is (\fI$XDG_CONFIG_HOME/weave/weave.toml\fR, else
\fI~/.config/weave/weave.toml\fR): its \fBdaemon.socket\fR is the default
socket, and \fBconfig check\fR checks it.
.TP
.B XDG_RUNTIME_DIR
The user\-mode socket is \fI$XDG_RUNTIME_DIR/weave/weave.sock\fR.
.SH FILES
.TP
.I $XDG_RUNTIME_DIR/weave/weave.sock
Your own (user\-mode) daemon, used when it exists and your config names no
other socket.
.TP
.I /run/weave/weave.sock
The system daemon, otherwise. It is open to the members of its client group;
an administrator needs that group as well as the admin group.
.TP
.I ~/.config/weave/weave.toml
Your user\-mode config, see \fBweave.toml\fR(5).
.TP
.I /etc/weave/weave.toml
The system config.
.SH EXAMPLES
.nf
.RS
sshmctl status
sshmctl models
sshmctl generate \-\-model digits \-\-prompt "a handwritten digit seven" \-o seven.png
sshmctl generate \-\-model digits \-\-prompt "the digit 3" \-\-steps 20 \-\-preview 5 \-o three.png
sshmctl generate \-m digits \-p "a 3" \-\-seed 42 \-\-steps 30 \-o \- > three.png
sshmctl \-\-json generate \-m digits \-p "a 5" \-\-batch 4 \-o five.png
sshmctl generate \-m digits \-p "a handwritten digit eight" \-\-init\-image three.png \-\-strength 0.6 \-o eight.png
sshmctl generate \-m digits \-p "a 1" \-\-init\-image three.png \-\-mask right\-half.png \-o inpainted.png
sshmctl generate \-m digits \-p "a 5" \-\-lora digits\-bold:0.8 \-o bold\-five.png
sshmctl jobs
sshmctl config check \-\-system
.RE
.fi
.SH "SEE ALSO"
.BR weave\-broker (8),
.BR weave.toml (5)
"#;

/// `sshmctl(1)` with the extra sections.
pub fn top_page() -> io::Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    page.extend_from_slice(EXTRA_SECTIONS.as_bytes());
    Ok(page)
}

/// Writes `sshmctl.1` and one page per subcommand into `dir`.
pub fn write_pages(dir: &Path) -> io::Result<()> {
    // The top page refers to `sshmctl-<verb>(1)`; write those too.
    clap_mangen::generate_to(Cli::command(), dir)?;
    std::fs::write(dir.join("sshmctl.1"), top_page()?)
}

/// Shell glue that completes `--model`/`-m` with the ids the daemon lists
/// (`sshmctl __model-ids`), when one is reachable.
fn model_id_glue(shell: Shell) -> Option<&'static str> {
    match shell {
        Shell::Bash => Some(
            r#"
# Model ids for --model/-m, from the daemon when it answers.
_sshmctl_with_model_ids() {
    local prev="${COMP_WORDS[COMP_CWORD-1]}"
    if [[ $prev == --model || $prev == -m ]]; then
        COMPREPLY=($(compgen -W "$(sshmctl __model-ids 2>/dev/null)" -- "${COMP_WORDS[COMP_CWORD]}"))
        return 0
    fi
    _sshmctl "$@"
}
complete -F _sshmctl_with_model_ids -o nosort -o bashdefault -o default sshmctl
"#,
        ),
        Shell::Fish => Some(
            r#"
# Model ids for --model/-m, from the daemon when it answers.
complete -c sshmctl -n "__fish_seen_subcommand_from generate" -s m -l model -x -a "(sshmctl __model-ids 2>/dev/null)"
"#,
        ),
        Shell::Zsh => Some(
            r#"
# Model ids for --model/-m, from the daemon when it answers.
_sshmctl_model_ids() {
    local -a ids
    ids=(${(f)"$(sshmctl __model-ids 2>/dev/null)"})
    _describe 'model id' ids
}
"#,
        ),
        _ => None,
    }
}

/// The completion script for `shell`, written in one go. A reader that
/// went away (`| head`) is not an error.
pub fn completions(shell: Shell, out: &mut impl Write) -> io::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "sshmctl", &mut script);
    let glue = model_id_glue(shell).unwrap_or_default();
    if shell == Shell::Zsh {
        // clap gives `--model` the `_default` action; point it at the ids,
        // and define the function before the script's last line calls
        // `_sshmctl` (on the first completion it is sourced and run at once).
        let text = String::from_utf8_lossy(&script)
            .replace("]:MODEL:_default'", "]:MODEL:_sshmctl_model_ids'");
        let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
        script = format!("{first}\n{glue}{rest}").into_bytes();
    } else {
        script.extend_from_slice(glue.as_bytes());
    }
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
