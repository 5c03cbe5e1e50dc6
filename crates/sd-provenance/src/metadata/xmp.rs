//! A small XMP packet for PNG (`iTXt`, keyword `XML:com.adobe.xmp`, uncompressed) with the IPTC digital source
//! type — the machine-readable "made by AI" label that exiftool, Pillow's `getxmp()` and photo tools read — plus
//! the GB 45438 `AIGC` JSON and our watermark record.

pub const KEYWORD: &str = "XML:com.adobe.xmp";
pub const NS_IPTC_EXT: &str = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/";
pub const NS_TC260: &str = "http://www.tc260.org.cn/ns/AIGC/1.0/";
/// Our own namespace for facts no standard property covers (the watermark choice).
pub const NS_SDRS: &str = "urn:sd-rs:xmp:1.0/";
pub const TRAINED: &str = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia";
pub const COMPOSITE: &str = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia";

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => {}
            c => out.push(c),
        }
    }
    out
}

pub fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

pub struct XmpFields<'a> {
    pub digital_source_type: &'a str,
    pub creator_tool: &'a str,
    pub create_date: &'a str,
    pub aigc_json: &'a str,
    pub watermark: &'a str,
}

pub fn build(f: &XmpFields) -> String {
    format!(
        concat!(
            "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n",
            "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\">\n",
            " <rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\n",
            "  <rdf:Description rdf:about=\"\"\n",
            "    xmlns:xmp=\"http://ns.adobe.com/xap/1.0/\"\n",
            "    xmlns:Iptc4xmpExt=\"{iptc}\"\n",
            "    xmlns:TC260=\"{tc260}\"\n",
            "    xmlns:sdrs=\"{sdrs}\"\n",
            "    xmp:CreatorTool=\"{tool}\"\n",
            "    xmp:CreateDate=\"{date}\"\n",
            "    Iptc4xmpExt:DigitalSourceType=\"{dst}\"\n",
            "    sdrs:Watermark=\"{wm}\">\n",
            "   <TC260:AIGC>{aigc}</TC260:AIGC>\n",
            "  </rdf:Description>\n",
            " </rdf:RDF>\n",
            "</x:xmpmeta>\n",
            "<?xpacket end=\"w\"?>"
        ),
        iptc = NS_IPTC_EXT,
        tc260 = NS_TC260,
        sdrs = NS_SDRS,
        tool = escape(f.creator_tool),
        date = escape(f.create_date),
        dst = escape(f.digital_source_type),
        wm = escape(f.watermark),
        aigc = escape(f.aigc_json),
    )
}

/// Value of a simple property written either as an attribute (`prefix:Name="v"`) or as an element
/// (`<prefix:Name>v</prefix:Name>`), matched on the local name so any prefix works. Good enough for reading labels
/// from other tools; not a general XMP parser.
pub fn property(xmp: &str, local_name: &str) -> Option<String> {
    let attr =
        regex::Regex::new(&format!(r#"[\w.-]+:{}\s*=\s*("([^"]*)"|'([^']*)')"#, regex::escape(local_name))).ok()?;
    if let Some(c) = attr.captures(xmp) {
        let v = c.get(2).or_else(|| c.get(3)).map(|m| m.as_str()).unwrap_or("");
        return Some(unescape(v));
    }
    let res =
        regex::Regex::new(&format!(r#"<[\w.-]+:{}\s+rdf:resource\s*=\s*"([^"]*)""#, regex::escape(local_name))).ok()?;
    if let Some(c) = res.captures(xmp) {
        return Some(unescape(&c[1]));
    }
    let elem = regex::Regex::new(&format!(
        r#"<([\w.-]+):{0}(?:\s[^>]*)?>([\s\S]*?)</[\w.-]+:{0}>"#,
        regex::escape(local_name)
    ))
    .ok()?;
    let inner = elem.captures(xmp)?.get(2)?.as_str().trim().to_string();
    // `rdf:resource`-style or nested rdf:li: take the first text content
    let li = regex::Regex::new(r"<rdf:li[^>]*>([\s\S]*?)</rdf:li>").ok()?;
    let v = li.captures(&inner).and_then(|c| c.get(1)).map(|m| m.as_str().to_string()).unwrap_or(inner);
    Some(unescape(v.trim()))
}
