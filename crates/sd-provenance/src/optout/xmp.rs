//! The opt-out facts of one XMP packet, read with a namespace-aware XML parser (quick-xml): properties are
//! matched by namespace URI and local name, so any prefix works, and by every RDF form a writer may use — an
//! attribute of `rdf:Description`, an element with text, an element with `rdf:resource`, or a value inside
//! `rdf:Alt`/`rdf:Bag`/`rdf:Seq` items.

use super::ScanLimits;
use anyhow::{bail, Context, Result};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::{NsReader, XmlVersion};

/// IPTC/PLUS License Data Format namespace (`plus:DataMining`).
pub const NS_PLUS: &str = "http://ns.useplus.org/ldf/xmp/1.0/";
/// W3C TDMRep: `http://www.w3.org/ns/tdmrep/` in XMP (the PDF binding); the JSON-LD context spells it with `#`.
pub const NS_TDMREP: [&str; 2] = ["http://www.w3.org/ns/tdmrep/", "http://www.w3.org/ns/tdmrep#"];
const NS_RDF: &str = "http://www.w3.org/1999/02/22-rdf-syntax-ns#";

/// What a packet says about text and data mining.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XmpFacts {
    /// Every `plus:DataMining` value, as written.
    pub data_mining: Vec<String>,
    /// `tdm:reservation`, as written (the policy decides what counts as 0 or 1).
    pub tdm_reservation: Option<String>,
    pub tdm_policy: Option<String>,
    /// Every text or attribute value of the packet (for the `noai` marker scan).
    pub values: Vec<String>,
}

/// One property value found in the packet: its namespace, local name and value.
fn record(facts: &mut XmpFacts, ns: &str, local: &str, value: &str) {
    let value = value.trim();
    if value.is_empty() {
        return;
    }
    if ns == NS_PLUS && local == "DataMining" {
        facts.data_mining.push(value.to_string());
    } else if NS_TDMREP.contains(&ns) && local == "reservation" {
        facts.tdm_reservation.get_or_insert_with(|| value.to_string());
    } else if NS_TDMREP.contains(&ns) && local == "policy" {
        facts.tdm_policy.get_or_insert_with(|| value.to_string());
    }
    facts.values.push(value.to_string());
}

fn ns_of(r: &ResolveResult) -> String {
    match r {
        ResolveResult::Bound(ns) => String::from_utf8_lossy(ns.as_ref()).into_owned(),
        _ => String::new(),
    }
}

/// The five entities XML predefines; any other named entity is an error (XMP declares none).
fn entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        _ => return None,
    })
}

/// Parse `packet` (the text between `<?xpacket begin` and `end?>`, or any XMP document).
pub fn parse(packet: &str, limits: &ScanLimits) -> Result<XmpFacts> {
    if packet.len() > limits.max_xmp_bytes {
        bail!("XMP packet of {} bytes exceeds the XMP packet limit of {} bytes", packet.len(), limits.max_xmp_bytes);
    }
    let mut reader = NsReader::from_str(packet);
    let mut facts = XmpFacts::default();
    // Open elements: (namespace, local name). A text value belongs to the innermost non-RDF element.
    let mut stack: Vec<(String, String)> = Vec::new();
    let mut text = String::new();
    loop {
        let (resolved, event) = reader.read_resolved_event().context("malformed XMP")?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let is_empty = matches!(event, Event::Empty(_));
                let ns = ns_of(&resolved);
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                for attr in e.attributes() {
                    let attr = attr.context("malformed XMP attribute")?;
                    let (ans, alocal) = reader.resolver().resolve_attribute(attr.key);
                    let ans = ns_of(&ans);
                    let alocal = String::from_utf8_lossy(alocal.as_ref()).into_owned();
                    let value =
                        attr.normalized_value(XmlVersion::Implicit1_0).context("malformed XMP attribute value")?;
                    if ans == NS_RDF && alocal == "resource" {
                        // <plus:DataMining rdf:resource="…"/>: the element's value
                        record(&mut facts, &ns, &local, &value);
                    } else if !ans.is_empty() && ans != NS_RDF && !ans.starts_with("http://www.w3.org/XML/") {
                        record(&mut facts, &ans, &alocal, &value);
                    }
                }
                if !is_empty {
                    if stack.len() >= limits.max_xml_depth {
                        bail!("XMP nesting exceeds the XMP depth limit of {} levels", limits.max_xml_depth);
                    }
                    stack.push((ns, local));
                    text.clear();
                }
            }
            Event::Text(t) => text.push_str(&t.xml10_content().context("XMP text is not valid UTF-8")?),
            Event::CData(t) => text.push_str(&String::from_utf8_lossy(&t)),
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().context("bad character reference in XMP")? {
                    Some(c) => Some(c),
                    None => entity(&r.decode().context("bad entity in XMP")?),
                };
                match c {
                    Some(c) => text.push(c),
                    None => bail!("malformed XMP: undeclared entity &{};", String::from_utf8_lossy(&r)),
                }
            }
            Event::End(_) => {
                if !text.trim().is_empty() {
                    if let Some((ns, local)) = stack.iter().rev().find(|(ns, _)| ns != NS_RDF) {
                        record(&mut facts, ns, local, &text);
                    }
                }
                text.clear();
                stack.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(facts)
}
