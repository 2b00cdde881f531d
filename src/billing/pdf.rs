//! A printable invoice: an A4 PDF set in the standard Helvetica (every PDF reader has it,
//! so nothing is embedded), written with `pdf-writer`. Text is encoded as Windows-1252,
//! the standard fonts' WinAnsiEncoding; a character outside it prints as `?`.

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

/// What the page shows.
pub struct PrintedInvoice<'a> {
    pub clinic_name: &'a str,
    pub clinic_lines: Vec<String>,
    pub patient_name: &'a str,
    pub number: &'a str,
    pub issued_on: String,
    pub currency: &'a str,
    /// Minor-unit digits of the currency (2 for EUR, 0 for JPY, 3 for BHD).
    pub exponent: u32,
    /// Code, description, tooth and surfaces, fee in minor units.
    pub lines: Vec<(String, String, String, i64)>,
    pub total_cents: i64,
    pub paid_cents: i64,
    pub void: bool,
}

/// Minor units as a decimal amount in the currency's own exponent: `12345` → `123.45`.
pub fn amount(cents: i64, exponent: u32) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{abs}");
    }
    let unit = 10u64.pow(exponent);
    format!(
        "{sign}{}.{:0width$}",
        abs / unit,
        abs % unit,
        width = exponent as usize
    )
}

/// `s` in Windows-1252: Latin-1 as is, the euro sign and the typographic quotes and
/// dashes at their code points, anything else `?`; control characters become spaces.
pub fn win_ansi(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{ff}' => c as u8,
            '€' => 0x80,
            '‚' => 0x82,
            '„' => 0x84,
            '…' => 0x85,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '–' => 0x96,
            '—' => 0x97,
            c if c.is_control() => b' ',
            _ => b'?',
        })
        .collect()
}

const LINES_PER_PAGE: usize = 32;

/// Renders the invoice; one page per 32 lines.
pub fn render(inv: &PrintedInvoice) -> Vec<u8> {
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let regular = Ref::new(3);
    let bold = Ref::new(4);
    let info = Ref::new(5);
    let chunks: Vec<&[(String, String, String, i64)]> = if inv.lines.is_empty() {
        vec![&[]]
    } else {
        inv.lines.chunks(LINES_PER_PAGE).collect()
    };
    let pages: Vec<(Ref, Ref)> = (0..chunks.len())
        .map(|i| {
            let n = 6 + 2 * i as i32;
            (Ref::new(n), Ref::new(n + 1))
        })
        .collect();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids(pages.iter().map(|(p, _)| *p))
        .count(pages.len() as i32);
    pdf.document_info(info)
        .title(TextStr(&format!("Invoice {}", inv.number)))
        .producer(TextStr("Molar"));
    for (font, name) in [(regular, "Helvetica"), (bold, "Helvetica-Bold")] {
        pdf.type1_font(font)
            .base_font(Name(name.as_bytes()))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
    }
    let money = |c: i64| format!("{} {}", amount(c, inv.exponent), inv.currency);
    for (i, ((page, content_id), lines)) in pages.iter().zip(&chunks).enumerate() {
        let mut p = pdf.page(*page);
        p.media_box(Rect::new(0.0, 0.0, 595.0, 842.0));
        p.parent(tree);
        p.contents(*content_id);
        let mut resources = p.resources();
        let mut fonts = resources.fonts();
        fonts.pair(Name(b"R"), regular);
        fonts.pair(Name(b"B"), bold);
        fonts.finish();
        resources.finish();
        p.finish();

        let mut c = Content::new();
        let text = |c: &mut Content, font: &[u8], size: f32, x: f32, y: f32, s: &str| {
            c.begin_text();
            c.set_font(Name(font), size);
            c.next_line(x, y);
            c.show(Str(&win_ansi(s)));
            c.end_text();
        };
        let mut y = 790.0;
        text(&mut c, b"B", 16.0, 50.0, y, inv.clinic_name);
        for l in &inv.clinic_lines {
            y -= 14.0;
            text(&mut c, b"R", 10.0, 50.0, y, l);
        }
        let title = if inv.void {
            format!("Invoice {} (VOID)", inv.number)
        } else {
            format!("Invoice {}", inv.number)
        };
        text(&mut c, b"B", 14.0, 50.0, 700.0, &title);
        text(
            &mut c,
            b"R",
            10.0,
            50.0,
            682.0,
            &format!("Issued {}", inv.issued_on),
        );
        text(
            &mut c,
            b"R",
            10.0,
            50.0,
            668.0,
            &format!("Patient: {}", inv.patient_name),
        );
        if chunks.len() > 1 {
            let page_no = format!("Page {} of {}", i + 1, chunks.len());
            text(&mut c, b"R", 9.0, 480.0, 700.0, &page_no);
        }
        let mut y = 630.0;
        for (x, head) in [
            (50.0, "Code"),
            (130.0, "Description"),
            (380.0, "Tooth"),
            (470.0, "Fee"),
        ] {
            text(&mut c, b"B", 10.0, x, y, head);
        }
        c.set_line_width(0.5);
        c.move_to(50.0, y - 4.0);
        c.line_to(545.0, y - 4.0);
        c.stroke();
        for (code, description, tooth, fee) in lines.iter() {
            y -= 16.0;
            let description: String = description.chars().take(48).collect();
            text(&mut c, b"R", 10.0, 50.0, y, code);
            text(&mut c, b"R", 10.0, 130.0, y, &description);
            text(&mut c, b"R", 10.0, 380.0, y, tooth);
            text(&mut c, b"R", 10.0, 470.0, y, &money(*fee));
        }
        if i + 1 == chunks.len() {
            y -= 30.0;
            text(&mut c, b"B", 10.0, 380.0, y, "Total");
            text(&mut c, b"B", 10.0, 470.0, y, &money(inv.total_cents));
            y -= 16.0;
            text(&mut c, b"R", 10.0, 380.0, y, "Paid");
            text(&mut c, b"R", 10.0, 470.0, y, &money(inv.paid_cents));
            y -= 16.0;
            text(&mut c, b"B", 10.0, 380.0, y, "Open");
            let open = if inv.void {
                0
            } else {
                inv.total_cents - inv.paid_cents
            };
            text(&mut c, b"B", 10.0, 470.0, y, &money(open));
        }
        pdf.stream(*content_id, &c.finish());
    }
    pdf.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_follow_the_currency_exponent() {
        assert_eq!(amount(12345, 2), "123.45");
        assert_eq!(amount(5, 2), "0.05");
        assert_eq!(amount(-1500, 2), "-15.00");
        assert_eq!(amount(1500, 0), "1500");
        assert_eq!(amount(1234, 3), "1.234");
    }

    #[test]
    fn text_is_windows_1252_with_a_question_mark_for_the_rest() {
        assert_eq!(win_ansi("Zahnärztin €5"), b"Zahn\xe4rztin \x805".to_vec());
        assert_eq!(win_ansi("歯\n"), b"? ".to_vec());
    }

    #[test]
    fn a_long_invoice_runs_over_pages_and_is_a_pdf() {
        let inv = PrintedInvoice {
            clinic_name: "Lindenhof Dental",
            clinic_lines: vec!["Lindenstraße 1".into()],
            patient_name: "Max Mustermann",
            number: "2027-000042",
            issued_on: "2027-01-05".into(),
            currency: "EUR",
            exponent: 2,
            lines: (0..40)
                .map(|i| (format!("X{i}"), "Filling".into(), "36".into(), 9500))
                .collect(),
            total_cents: 380_000,
            paid_cents: 0,
            void: false,
        };
        let bytes = render(&inv);
        assert!(bytes.starts_with(b"%PDF-"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("/Count 2"), "two pages");
        assert!(text.trim_end().ends_with("%%EOF"));
    }
}
