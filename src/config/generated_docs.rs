//! The generated sections of `docs/`: each test fails when its section differs from what the
//! code renders, and rewrites the section instead when `MOLAR_WRITE_DOCS=1`.

use std::path::PathBuf;

#[test]
fn configuration_reference_is_current() {
    check_section(
        "docs/configuration.md",
        "configuration",
        &super::reference::markdown(),
    );
}

#[test]
fn permission_matrix_is_current() {
    check_section(
        "docs/roles-and-permissions.md",
        "permissions",
        &crate::auth::permission_matrix_markdown(),
    );
}

#[test]
fn webhook_events_are_current() {
    check_section(
        "docs/webhooks.md",
        "webhook-events",
        &crate::webhooks::events_markdown(),
    );
}

#[test]
fn fhir_capabilities_are_current() {
    check_section(
        "docs/fhir.md",
        "fhir-capabilities",
        &crate::fhir::capability::markdown_table(),
    );
}

fn check_section(file: &str, name: &str, rendered: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {file}: {e}"));
    let updated =
        replace_section(&text, name, rendered).unwrap_or_else(|why| panic!("{file}: {why}"));
    if updated == text {
        return;
    }
    if std::env::var("MOLAR_WRITE_DOCS").as_deref() == Ok("1") {
        std::fs::write(&path, updated).unwrap_or_else(|e| panic!("writing {file}: {e}"));
    } else {
        panic!("{file} is out of date: run `MOLAR_WRITE_DOCS=1 cargo test --lib generated_docs`");
    }
}

/// `text` with the lines between the section's BEGIN and END markers replaced by `rendered`.
fn replace_section(text: &str, name: &str, rendered: &str) -> Result<String, String> {
    let begin = format!("<!-- BEGIN GENERATED: {name} -->");
    let end = format!("<!-- END GENERATED: {name} -->");
    let lines: Vec<&str> = text.lines().collect();
    let find = |marker: &str| {
        let found: Vec<usize> = (0..lines.len()).filter(|&i| lines[i] == marker).collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!("no line `{marker}`")),
            _ => Err(format!("more than one line `{marker}`")),
        }
    };
    let (first, last) = (find(&begin)?, find(&end)?);
    if last < first {
        return Err(format!("`{end}` comes before `{begin}`"));
    }
    let mut out: Vec<&str> = lines[..=first].to_vec();
    out.extend(rendered.lines());
    out.extend(&lines[last..]);
    let mut joined = out.join("\n");
    if text.ends_with('\n') {
        joined.push('\n');
    }
    Ok(joined)
}

#[test]
fn only_the_marked_section_is_replaced() {
    let text = "# Title\n\nprose\n<!-- BEGIN GENERATED: x -->\nold\nrows\n<!-- END GENERATED: x -->\nmore prose\n";
    assert_eq!(
        replace_section(text, "x", "new\n").expect("markers present"),
        "# Title\n\nprose\n<!-- BEGIN GENERATED: x -->\nnew\n<!-- END GENERATED: x -->\nmore prose\n"
    );
    assert!(replace_section("no markers\n", "x", "new\n").is_err());
    assert!(replace_section(
        "<!-- END GENERATED: x -->\n<!-- BEGIN GENERATED: x -->\n",
        "x",
        ""
    )
    .is_err());
}
