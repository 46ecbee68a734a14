//! Pure SDP edits between a browser and FreeSWITCH.
//!
//! mod_verto has no trickle ICE: the offer in `verto.invite` must already hold every candidate,
//! and FreeSWITCH only uses UDP candidates with literal IP addresses, the first one in SDP order
//! that matches its ACL (PROTOCOL.md B.7). [`merge_candidates`] therefore moves trickled
//! candidates into their own `m=` section and leaves out what FreeSWITCH would skip anyway.
//!
//! FreeSWITCH's answer has no `a=mid` and no `a=group:BUNDLE`, which browsers refuse for a
//! bundled offer; [`repair_answer`] adds them back from the offer.
//!
//! Every function here is pure (text in, text out) so that it can be table-tested and fuzzed.
//! Lines we do not understand are kept byte for byte, with the original line ending.

use std::net::IpAddr;

/// Why an SDP could not be edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// It does not start with `v=`.
    #[error("not an SDP body (no v= line)")]
    NotSdp,
    /// No `m=` line: nothing to put candidates in.
    #[error("SDP has no media section")]
    NoMediaSection,
}

/// Why a candidate is left out of the offer sent to FreeSWITCH.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// FreeSWITCH only reads UDP candidates.
    #[error("transport {0} (FreeSWITCH uses UDP only)")]
    NotUdp(String),
    /// An mDNS name: FreeSWITCH does not resolve them.
    #[error("mDNS host name {0}")]
    Mdns(String),
    /// Any other host name instead of a literal address.
    #[error("host name {0} instead of an IP address")]
    HostName(String),
    /// Not `candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>`.
    #[error("malformed candidate line")]
    Malformed,
    /// Neither `sdpMid` nor `sdpMLineIndex` names a section of the offer.
    #[error("no m= section for sdpMid {mid:?} / sdpMLineIndex {index:?}")]
    NoSection {
        /// The candidate's `sdpMid`.
        mid: Option<String>,
        /// The candidate's `sdpMLineIndex`.
        index: Option<u64>,
    },
}

/// A trickled candidate, as carried by `m.call.candidates`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrickleCandidate {
    /// The attribute value, `candidate:...` (an optional `a=` is tolerated).
    pub candidate: String,
    /// The `a=mid` of the target section.
    pub sdp_mid: Option<String>,
    /// The zero-based index of the target `m=` line.
    pub sdp_m_line_index: Option<u64>,
}

impl TrickleCandidate {
    /// The empty candidate string is the end-of-candidates marker.
    pub fn is_end_of_candidates(&self) -> bool {
        self.candidate.trim().is_empty()
    }
}

/// The offer after merging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The complete offer for `verto.invite`.
    pub sdp: String,
    /// Candidates FreeSWITCH can use. Zero means FreeSWITCH would hang up with cause 88.
    pub usable: usize,
    /// What was left out, and why (for debug logs).
    pub dropped: Vec<(String, Unusable)>,
}

/// Checks that FreeSWITCH can use a candidate (UDP, literal IP).
pub fn classify(candidate: &str) -> Result<(), Unusable> {
    let value = strip_candidate_prefix(candidate).ok_or(Unusable::Malformed)?;
    if candidate.contains(['\r', '\n']) {
        return Err(Unusable::Malformed);
    }
    let fields: Vec<&str> = value.split_ascii_whitespace().collect();
    if fields.len() < 8 || fields[6] != "typ" {
        return Err(Unusable::Malformed);
    }
    if fields[1].parse::<u8>().is_err()
        || fields[3].parse::<u32>().is_err()
        || fields[5].parse::<u16>().is_err()
    {
        return Err(Unusable::Malformed);
    }
    if !fields[2].eq_ignore_ascii_case("udp") {
        return Err(Unusable::NotUdp(fields[2].to_ascii_lowercase()));
    }
    let addr = fields[4];
    if addr.parse::<IpAddr>().is_ok() {
        Ok(())
    } else if addr.to_ascii_lowercase().ends_with(".local") {
        Err(Unusable::Mdns(addr.to_owned()))
    } else {
        Err(Unusable::HostName(addr.to_owned()))
    }
}

/// True when an SDP already holds every candidate its sender will gather.
///
/// Either the sender says so (`a=end-of-candidates`), or it does not announce trickle ICE
/// *and* already carries a usable candidate. An offer with neither candidates nor the trickle
/// option is not complete: aiortc and other non-browser stacks send exactly that and then
/// trickle their candidates in `m.call.candidates`, which the Matrix spec allows any client.
pub fn is_complete(sdp: &str) -> bool {
    let mut marked = false;
    let mut trickle = false;
    let mut usable = false;
    for line in sdp.lines().map(str::trim) {
        if line == "a=end-of-candidates" {
            marked = true;
        } else if let Some(opts) = line.strip_prefix("a=ice-options:") {
            trickle |= opts.split_ascii_whitespace().any(|o| o == "trickle");
        } else if let Some(value) = line.strip_prefix("a=") {
            usable |= value.starts_with("candidate:") && classify(value).is_ok();
        }
    }
    marked || (!trickle && usable)
}

/// Whether every transport the offer asks for already has a candidate FreeSWITCH can use,
/// from the offer itself or trickled: each media section that is not refused (port 0) and
/// does not ride on another section's transport (a BUNDLE member after the group's first).
/// Once this holds, later candidates only add alternatives, so a caller that never sends the
/// end-of-candidates marker can be dialled after a short quiet period instead of a long wait.
pub fn covers_every_transport(offer: &str, trickled: &[TrickleCandidate]) -> bool {
    let Ok(lines) = split(offer) else {
        return false;
    };
    let mut found = Found {
        cands: vec![Vec::new(); lines.media.len()],
        usable: 0,
        dropped: Vec::new(),
    };
    let mids: Vec<Option<String>> = lines.media.iter().map(|m| mid_of(m)).collect();
    found.take_from_offer(&lines.media);
    for t in trickled.iter().filter(|t| !t.is_end_of_candidates()) {
        found.place_trickled(t, &mids);
    }
    let riders = bundle_riders(&lines.session);
    let needs_own = |(section, mid): (&Vec<&str>, &Option<String>)| {
        let refused = section
            .first()
            .and_then(|m| m.split_ascii_whitespace().nth(1))
            .is_some_and(|port| port == "0");
        !refused && !mid.as_ref().is_some_and(|m| riders.contains(m))
    };
    let mut needed = lines.media.iter().zip(&mids).enumerate();
    !lines.media.is_empty() && needed.all(|(i, s)| !needs_own(s) || !found.cands[i].is_empty())
}

/// The `mid`s that share the transport of their BUNDLE group's first section.
fn bundle_riders(session: &[&str]) -> Vec<String> {
    session
        .iter()
        .filter_map(|l| l.strip_prefix("a=group:BUNDLE"))
        .flat_map(|mids| mids.split_ascii_whitespace().skip(1).map(str::to_owned))
        .collect()
}

/// Returns the part after `candidate:` (with or without a leading `a=`).
fn strip_candidate_prefix(s: &str) -> Option<&str> {
    let s = s.trim();
    let s = s.strip_prefix("a=").unwrap_or(s);
    s.strip_prefix("candidate:")
}

/// A parsed SDP kept as lines, split into the session part and one block per `m=` line.
struct Lines<'a> {
    eol: &'static str,
    session: Vec<&'a str>,
    media: Vec<Vec<&'a str>>,
}

fn split(sdp: &str) -> Result<Lines<'_>, SdpError> {
    if !sdp.trim_start().starts_with("v=") {
        return Err(SdpError::NotSdp);
    }
    let eol = if sdp.contains("\r\n") || !sdp.contains('\n') {
        "\r\n"
    } else {
        "\n"
    };
    let mut session = Vec::new();
    let mut media: Vec<Vec<&str>> = Vec::new();
    for line in sdp.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with("m=") {
            media.push(vec![line]);
        } else if let Some(m) = media.last_mut() {
            m.push(line);
        } else {
            session.push(line);
        }
    }
    Ok(Lines {
        eol,
        session,
        media,
    })
}

fn join(eol: &str, session: &[String], media: &[Vec<String>]) -> String {
    let mut out = String::new();
    for line in session.iter().chain(media.iter().flatten()) {
        out.push_str(line);
        out.push_str(eol);
    }
    out
}

fn mid_of(section: &[&str]) -> Option<String> {
    section
        .iter()
        .find_map(|l| l.strip_prefix("a=mid:"))
        .map(|m| m.trim().to_owned())
}

/// The candidates written inside an SDP, as if they had been trickled (with the `a=mid` and
/// index of their section), so that an offer's own candidates can be reused like trickled ones.
pub fn candidates_of(sdp: &str) -> Vec<TrickleCandidate> {
    let Ok(lines) = split(sdp) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, section) in lines.media.iter().enumerate() {
        let mid = mid_of(section);
        for line in section {
            if let Some(value) = line
                .strip_prefix("a=")
                .filter(|v| v.starts_with("candidate:"))
            {
                out.push(TrickleCandidate {
                    candidate: value.to_owned(),
                    sdp_mid: mid.clone(),
                    sdp_m_line_index: Some(i as u64),
                });
            }
        }
    }
    out
}

/// The media stream ids an SDP announces, in order and without repeats: `a=msid:<stream>`,
/// `a=ssrc:<n> msid:<stream>`, or (FreeSWITCH's answers) `a=msid-semantic: WMS <stream>`.
/// matrix-js-sdk keys its `sdp_stream_metadata` by these ids.
pub fn stream_ids(sdp: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for line in sdp.lines().map(str::trim) {
        let id = if let Some(v) = line.strip_prefix("a=msid:") {
            v.split_ascii_whitespace().next()
        } else if let Some(v) = line.strip_prefix("a=ssrc:") {
            v.split_once(" msid:")
                .and_then(|(_, m)| m.split_ascii_whitespace().next())
        } else if let Some(v) = line.strip_prefix("a=msid-semantic:") {
            v.trim()
                .strip_prefix("WMS")
                .and_then(|w| w.split_ascii_whitespace().next())
        } else {
            None
        };
        if let Some(id) = id.filter(|i| *i != "-" && *i != "*") {
            if !ids.iter().any(|x| x == id) {
                ids.push(id.to_owned());
            }
        }
    }
    ids
}

/// Puts trickled candidates into the offer and drops the ones FreeSWITCH cannot use.
///
/// Each candidate goes into the section whose `a=mid` equals its `sdpMid`, else the section at
/// `sdpMLineIndex`. Candidates already in the offer are checked the same way. Every section
/// that ends up with candidates gets a single `a=end-of-candidates`, since the offer is now
/// complete. Duplicates (the same candidate in the offer and in an event) are kept once.
pub fn merge_candidates(offer: &str, trickled: &[TrickleCandidate]) -> Result<Merged, SdpError> {
    let lines = split(offer)?;
    if lines.media.is_empty() {
        return Err(SdpError::NoMediaSection);
    }
    let mut found = Found {
        cands: vec![Vec::new(); lines.media.len()],
        usable: 0,
        dropped: Vec::new(),
    };
    let mids: Vec<Option<String>> = lines.media.iter().map(|m| mid_of(m)).collect();
    let rest = found.take_from_offer(&lines.media);
    for t in trickled.iter().filter(|t| !t.is_end_of_candidates()) {
        found.place_trickled(t, &mids);
    }
    let media = with_candidates(rest, std::mem::take(&mut found.cands));
    let session = found.filter_session(&lines.session);
    Ok(Merged {
        sdp: join(lines.eol, &session, &media),
        usable: found.usable,
        dropped: found.dropped,
    })
}

/// The candidates gathered for [`merge_candidates`]. Offer candidates come first in each
/// section so the browser's own order (its priorities) survives; the count and the drop list
/// span every source, since FreeSWITCH hangs up when no usable one is left at all.
struct Found {
    /// Candidate values (without `a=`) per media section, in order.
    cands: Vec<Vec<String>>,
    usable: usize,
    dropped: Vec<(String, Unusable)>,
}

impl Found {
    /// Keeps a usable candidate once per section: the browser may send in an event a
    /// candidate the offer already has.
    fn add(&mut self, i: usize, value: String) {
        if !self.cands[i].contains(&value) {
            self.cands[i].push(value);
            self.usable += 1;
        }
    }

    /// Moves the offer's candidates out of its sections and returns the other lines. Old
    /// `a=end-of-candidates` lines go too: one is added back after the last candidate.
    fn take_from_offer(&mut self, media: &[Vec<&str>]) -> Vec<Vec<String>> {
        let mut rest = Vec::with_capacity(media.len());
        for (i, section) in media.iter().enumerate() {
            let mut kept = Vec::new();
            for line in section {
                if let Some(value) = line.strip_prefix("a=") {
                    if value.starts_with("candidate:") {
                        match classify(value) {
                            Ok(()) => self.add(i, value.to_owned()),
                            Err(why) => self.dropped.push((value.to_owned(), why)),
                        }
                        continue;
                    }
                    if value == "end-of-candidates" {
                        continue;
                    }
                }
                kept.push((*line).to_owned());
            }
            rest.push(kept);
        }
        rest
    }

    /// The `sdpMid` wins over the index: browsers may reorder or bundle sections, and the
    /// mid is what names a section for sure.
    fn place_trickled(&mut self, t: &TrickleCandidate, mids: &[Option<String>]) {
        let target = t
            .sdp_mid
            .as_deref()
            .and_then(|mid| mids.iter().position(|m| m.as_deref() == Some(mid)))
            .or_else(|| {
                t.sdp_m_line_index
                    .and_then(|i| usize::try_from(i).ok())
                    .filter(|i| *i < mids.len())
            });
        let Some(i) = target else {
            self.dropped.push((
                t.candidate.clone(),
                Unusable::NoSection {
                    mid: t.sdp_mid.clone(),
                    index: t.sdp_m_line_index,
                },
            ));
            return;
        };
        match classify(&t.candidate) {
            Ok(()) => {
                let value = t
                    .candidate
                    .trim()
                    .strip_prefix("a=")
                    .unwrap_or(t.candidate.trim())
                    .to_owned();
                self.add(i, value);
            }
            Err(why) => self.dropped.push((t.candidate.clone(), why)),
        }
    }

    /// Session-level candidates (FreeSWITCH reads them after the media-level ones) are
    /// filtered and counted the same way, but stay where they are.
    fn filter_session(&mut self, lines: &[&str]) -> Vec<String> {
        let mut session = Vec::with_capacity(lines.len());
        for line in lines {
            match line
                .strip_prefix("a=")
                .filter(|v| v.starts_with("candidate:"))
            {
                Some(value) => match classify(value) {
                    Ok(()) => {
                        self.usable += 1;
                        session.push((*line).to_owned());
                    }
                    Err(why) => self.dropped.push((value.to_owned(), why)),
                },
                None => session.push((*line).to_owned()),
            }
        }
        session
    }
}

/// Appends each section's candidates and, because the offer is now complete, a single
/// `a=end-of-candidates`; a section without any gets neither.
fn with_candidates(rest: Vec<Vec<String>>, cands: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rest.into_iter()
        .zip(cands)
        .map(|(mut section, c)| {
            if !c.is_empty() {
                section.extend(c.into_iter().map(|v| format!("a={v}")));
                section.push("a=end-of-candidates".to_owned());
            }
            section
        })
        .collect()
}

/// Makes FreeSWITCH's answer acceptable to the browser that sent `offer`.
///
/// Adds the offer's `a=mid` to each answer section that lacks one (by `m=` line order), and,
/// when the offer bundles and the answer has a single section, the matching
/// `a=group:BUNDLE` line. Anything else is left as it was. If either side is not SDP the answer
/// is returned unchanged: FreeSWITCH's text is still the best we have.
pub fn repair_answer(answer: &str, offer: &str) -> String {
    let (Ok(a), Ok(o)) = (split(answer), split(offer)) else {
        return answer.to_owned();
    };
    let offer_mids: Vec<Option<String>> = o.media.iter().map(|m| mid_of(m)).collect();
    let offer_bundles = o.session.iter().any(|l| l.starts_with("a=group:BUNDLE"));
    let mut media: Vec<Vec<String>> = Vec::with_capacity(a.media.len());
    let mut answer_mids = Vec::new();
    for (i, section) in a.media.iter().enumerate() {
        let mut out: Vec<String> = section.iter().map(|s| (*s).to_owned()).collect();
        match mid_of(section) {
            Some(mid) => answer_mids.push(mid),
            None => {
                if let Some(Some(mid)) = offer_mids.get(i) {
                    out.insert(1, format!("a=mid:{mid}"));
                    answer_mids.push(mid.clone());
                }
            }
        }
        media.push(out);
    }
    let mut session: Vec<String> = a.session.iter().map(|s| (*s).to_owned()).collect();
    let answer_bundles = session.iter().any(|l| l.starts_with("a=group:BUNDLE"));
    if offer_bundles && !answer_bundles && a.media.len() == 1 && answer_mids.len() == 1 {
        // After `t=` if there is one, so the session attributes stay together.
        let at = session
            .iter()
            .position(|l| l.starts_with("t="))
            .map_or(session.len(), |p| p + 1);
        session.insert(at, format!("a=group:BUNDLE {}", answer_mids[0]));
    }
    join(a.eol, &session, &media)
}

/// Makes FreeSWITCH's offer (a server `verto.invite`) acceptable to a browser callee.
///
/// FreeSWITCH writes `RTP/SAVPF` although it offers DTLS (the fingerprint is there), no
/// `a=mid` and no `a=group:BUNDLE`, and candidates for RTCP's component 2 although it offers
/// `a=rtcp-mux`. Browsers insist on mids to match their answer's sections, and component-2
/// candidates are noise to a peer that muxes RTCP. The offer is complete (mod_verto has no
/// trickle ICE), so sections with candidates get `a=end-of-candidates`. Not SDP: unchanged.
pub fn offer_for_browser(offer: &str) -> String {
    let Ok(o) = split(offer) else {
        return offer.to_owned();
    };
    let mut mids = Vec::new();
    let mut media: Vec<Vec<String>> = Vec::with_capacity(o.media.len());
    for (i, section) in o.media.iter().enumerate() {
        let dtls = section.iter().any(|l| l.starts_with("a=fingerprint:"));
        let mux = section.contains(&"a=rtcp-mux");
        let mut out: Vec<String> = Vec::with_capacity(section.len() + 2);
        for (n, line) in section.iter().enumerate() {
            if n == 0 && dtls {
                out.push(line.replacen(" RTP/SAVPF ", " UDP/TLS/RTP/SAVPF ", 1));
            } else if mux && candidate_component(line).is_some_and(|c| c != "1") {
                continue;
            } else {
                out.push((*line).to_owned());
            }
        }
        add_telephone_event(&mut out);
        let mid = mid_of(section).unwrap_or_else(|| {
            out.insert(1, format!("a=mid:{i}"));
            i.to_string()
        });
        mids.push(mid);
        let has_cands = out.iter().any(|l| candidate_component(l).is_some());
        if has_cands && !out.iter().any(|l| l == "a=end-of-candidates") {
            out.push("a=end-of-candidates".to_owned());
        }
        media.push(out);
    }
    let mut session: Vec<String> = o.session.iter().map(|s| (*s).to_owned()).collect();
    if !mids.is_empty() && !session.iter().any(|l| l.starts_with("a=group:BUNDLE")) {
        let at = session
            .iter()
            .position(|l| l.starts_with("t="))
            .map_or(session.len(), |p| p + 1);
        session.insert(at, format!("a=group:BUNDLE {}", mids.join(" ")));
    }
    join(o.eol, &session, &media)
}

/// The payload type the telephone events are offered at: 101, which browsers and most SIP
/// gear expect, unless the section already uses it.
const TELEPHONE_EVENT_PT: u8 = 101;

/// Adds `telephone-event/8000` (RFC 4733, events 0-15) to an audio section that has none.
///
/// mod_verto never offers telephone events (it sets no payload type for them), and Chromium
/// only lets a page send keypad digits (`RTCDTMFSender.canInsertDTMF`) when the negotiated
/// session has them. The payload type is 101, or the first free dynamic one if 101 is taken.
/// Other sections, and sections whose `m=` line cannot be read, are left as they are.
fn add_telephone_event(section: &mut Vec<String>) {
    let Some(m) = section.first() else {
        return;
    };
    let fields: Vec<&str> = m.split_whitespace().collect();
    if fields.first() != Some(&"m=audio") || fields.len() < 4 {
        return;
    }
    if section.iter().any(|l| is_telephone_event(l)) {
        return;
    }
    let used: Vec<u8> = fields[3..].iter().filter_map(|f| f.parse().ok()).collect();
    let Some(pt) = std::iter::once(TELEPHONE_EVENT_PT)
        .chain(96..=127)
        .find(|p| !used.contains(p))
    else {
        return;
    };
    let m_line = format!("{m} {pt}");
    // After the last codec line, so the codecs stay together.
    let at = section
        .iter()
        .rposition(|l| l.starts_with("a=rtpmap:") || l.starts_with("a=fmtp:"))
        .map_or(section.len(), |p| p + 1);
    section.insert(at, format!("a=fmtp:{pt} 0-15"));
    section.insert(at, format!("a=rtpmap:{pt} telephone-event/8000"));
    section[0] = m_line;
}

/// True when an audio section that takes media names `telephone-event` (RFC 4733).
pub fn has_telephone_event(sdp: &str) -> bool {
    let Ok(lines) = split(sdp) else {
        return false;
    };
    lines.media.iter().any(|m| {
        let mut m_line = m[0].split_whitespace();
        m_line.next() == Some("m=audio")
            && m_line.next() != Some("0")
            && m.iter().any(|l| is_telephone_event(l))
    })
}

fn is_telephone_event(line: &str) -> bool {
    line.starts_with("a=rtpmap:") && line.to_ascii_lowercase().contains(" telephone-event/")
}

/// True when an answer takes no media at all: every `m=` line has port 0 (a browser answers
/// so when no codec of the offer is one it has). Not SDP, or no sections: true too.
pub fn media_rejected(answer: &str) -> bool {
    let Ok(a) = split(answer) else {
        return true;
    };
    a.media
        .iter()
        .all(|m| m[0].split_whitespace().nth(1) == Some("0"))
}

/// The component id of an `a=candidate:` line.
fn candidate_component(line: &str) -> Option<&str> {
    line.strip_prefix("a=candidate:")?.split_whitespace().nth(1)
}

/// A media direction attribute (RFC 3264).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `a=sendrecv` (also the default when none is given).
    SendRecv,
    /// `a=sendonly`: the sender holds the other side (RFC 3264 section 8.4).
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    fn parse(line: &str) -> Option<Self> {
        Some(match line {
            "a=sendrecv" => Self::SendRecv,
            "a=sendonly" => Self::SendOnly,
            "a=recvonly" => Self::RecvOnly,
            "a=inactive" => Self::Inactive,
            _ => return None,
        })
    }

    fn line(self) -> &'static str {
        match self {
            Self::SendRecv => "a=sendrecv",
            Self::SendOnly => "a=sendonly",
            Self::RecvOnly => "a=recvonly",
            Self::Inactive => "a=inactive",
        }
    }

    /// The direction an answer takes to an offer with this one.
    pub fn answer(self) -> Self {
        match self {
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            other => other,
        }
    }

    /// True when the offerer puts the call on hold.
    pub fn is_hold(self) -> bool {
        matches!(self, Self::SendOnly | Self::Inactive)
    }
}

/// The direction of the first media section (its own line, else the session's, else sendrecv).
pub fn direction(sdp: &str) -> Direction {
    let Ok(lines) = split(sdp) else {
        return Direction::SendRecv;
    };
    let first = lines.media.first().into_iter().flatten();
    first
        .chain(lines.session.iter())
        .find_map(|l| Direction::parse(l.trim()))
        .unwrap_or(Direction::SendRecv)
}

/// The lines that name a media session's transport and media: the sections (without their
/// port), ICE credentials, DTLS fingerprints, mids, bundling and codecs. What else changes
/// between a browser's offers does not matter for a hold: the default address and candidates
/// it fills in after gathering, and header extensions the first answer dropped.
fn transport_lines(sdp: &str) -> Option<Vec<String>> {
    let lines = split(sdp).ok()?;
    let kept = [
        "a=ice-ufrag:",
        "a=ice-pwd:",
        "a=fingerprint:",
        "a=mid:",
        "a=group:",
        "a=rtpmap:",
        "a=fmtp:",
    ];
    let mut out = Vec::new();
    for l in lines
        .session
        .iter()
        .chain(lines.media.iter().flatten())
        .map(|l| l.trim())
    {
        if let Some(m) = l.strip_prefix("m=") {
            let f: Vec<&str> = m.split_ascii_whitespace().collect();
            let rest = f.get(2..).unwrap_or_default().join(" ");
            out.push(format!("m={} {rest}", f.first().unwrap_or(&"")));
        } else if kept.iter().any(|k| l.starts_with(k)) {
            out.push(l.to_owned());
        }
    }
    Some(out)
}

/// If `new` differs from `current` only in its direction (the same ICE credentials, DTLS
/// fingerprint, sections and codecs: a hold or a resume, as Element's hold button sends),
/// returns the new direction.
pub fn direction_change(current: &str, new: &str) -> Option<Direction> {
    let (a, b) = (transport_lines(current)?, transport_lines(new)?);
    (a == b && !a.is_empty()).then(|| direction(new))
}

/// `sdp` with every direction line set to `dir` (added after each `m=` line that has none)
/// and the origin's session version incremented, as a changed answer needs (RFC 3264 §8).
pub fn with_direction(sdp: &str, dir: Direction) -> String {
    let Ok(lines) = split(sdp) else {
        return sdp.to_owned();
    };
    let session: Vec<String> = lines
        .session
        .iter()
        .filter(|l| Direction::parse(l.trim()).is_none())
        .map(|l| bump_origin(l))
        .collect();
    let media: Vec<Vec<String>> = lines
        .media
        .iter()
        .map(|section| {
            let mut out: Vec<String> = section
                .iter()
                .filter(|l| Direction::parse(l.trim()).is_none())
                .map(|l| (*l).to_owned())
                .collect();
            out.insert(1.min(out.len()), dir.line().to_owned());
            out
        })
        .collect();
    join(lines.eol, &session, &media)
}

/// `o=<user> <id> <version> ...` with the version plus one; other lines unchanged.
fn bump_origin(line: &str) -> String {
    let Some(rest) = line.strip_prefix("o=") else {
        return line.to_owned();
    };
    let mut f: Vec<String> = rest.split(' ').map(str::to_owned).collect();
    if let Some(v) = f
        .get_mut(2)
        .and_then(|v| v.parse::<u64>().ok().map(|n| (v, n)))
    {
        *v.0 = v.1.wrapping_add(1).to_string();
    }
    format!("o={}", f.join(" "))
}

/// Changes the last byte of every `a=fingerprint` (session or media level).
///
/// After `verto.attach`, FreeSWITCH starts a new DTLS handshake with the *same* certificate;
/// Chromium keeps its old DTLS session while the remote fingerprint is unchanged, and media
/// stays dead. Offering once with an altered fingerprint makes Chromium drop that session,
/// so the following offer with the real fingerprint gets a fresh handshake (PROTOCOL.md D).
pub fn alter_fingerprint(sdp: &str) -> String {
    let Ok(lines) = split(sdp) else {
        return sdp.to_owned();
    };
    let fix = |l: &&str| -> String {
        match l.strip_prefix("a=fingerprint:") {
            Some(v) if v.len() >= 2 && v.is_char_boundary(v.len() - 2) => {
                let (head, last) = v.split_at(v.len() - 2);
                match u8::from_str_radix(last, 16) {
                    Ok(b) => format!("a=fingerprint:{head}{:02X}", b ^ 0x01),
                    Err(_) => (*l).to_owned(),
                }
            }
            _ => (*l).to_owned(),
        }
    };
    let session: Vec<String> = lines.session.iter().map(fix).collect();
    let media: Vec<Vec<String>> = lines
        .media
        .iter()
        .map(|m| m.iter().map(fix).collect())
        .collect();
    join(lines.eol, &session, &media)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = include_str!("../tests/fixtures/chromium_offer.sdp");
    const FS_ANSWER: &str = "v=0\r\no=FreeSWITCH 1795744740 1795744741 IN IP4 127.0.0.1\r\ns=FreeSWITCH\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\na=msid-semantic: WMS 3wv95VPUteELH19quUdb3bWHBuMRviYE\r\nm=audio 16458 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 opus/48000/2\r\na=setup:active\r\na=rtcp-mux\r\na=ice-ufrag:61z7sCwrljygyoQn\r\na=candidate:9101603196 1 udp 2130706431 127.0.0.1 16458 typ host generation 0\r\na=end-of-candidates\r\n";

    fn cand(c: &str, mid: Option<&str>, idx: Option<u64>) -> TrickleCandidate {
        TrickleCandidate {
            candidate: c.into(),
            sdp_mid: mid.map(Into::into),
            sdp_m_line_index: idx,
        }
    }

    #[test]
    fn media_rejected_table() {
        let ok = "v=0\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
        let refused = "v=0\r\nt=0 0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 0\r\n";
        let mixed = format!("{refused}m=video 9 UDP/TLS/RTP/SAVPF 96\r\n");
        assert!(!media_rejected(ok));
        assert!(media_rejected(refused));
        assert!(!media_rejected(&mixed));
        assert!(media_rejected("v=0\r\n"));
        assert!(media_rejected("nonsense"));
    }

    #[test]
    fn offer_for_browser_table() {
        let fs = include_str!("../tests/fixtures/verto/incoming_call_1001.jsonl")
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["conn"] == "u1001" && r["msg"]["method"] == "verto.invite")
            .unwrap()["msg"]["params"]["sdp"]
            .as_str()
            .unwrap()
            .to_owned();
        let out = offer_for_browser(&fs);
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert!(lines.contains(&"a=group:BUNDLE 0"), "{out}");
        assert!(
            lines.contains(&"m=audio 16858 UDP/TLS/RTP/SAVPF 96 0 8 101"),
            "{out}"
        );
        let m = lines.iter().position(|l| l.starts_with("m=")).unwrap();
        assert_eq!(lines[m + 1], "a=mid:0");
        let te = lines
            .iter()
            .position(|l| *l == "a=rtpmap:8 PCMA/8000")
            .unwrap();
        assert_eq!(
            lines[te + 1..te + 3],
            ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15"]
        );
        assert!(lines.contains(
            &"a=candidate:6517607159 1 udp 2130706431 127.0.0.1 16858 typ host generation 0"
        ));
        assert!(!out.contains("a=candidate:6517607159 2 "), "{out}");
        assert_eq!(out.matches("a=end-of-candidates").count(), 1);
        assert!(out.ends_with("\r\n"));
        // Idempotent, and what is already right stays.
        assert_eq!(offer_for_browser(&out), out);
        // Without DTLS or rtcp-mux nothing is rewritten but the mid and bundle.
        let plain = "v=0\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=candidate:1 2 udp 1 127.0.0.1 4001 typ host\r\n";
        let out = offer_for_browser(plain);
        assert!(
            out.contains("m=audio 4000 RTP/AVP 0 101\r\na=mid:0\r\n"),
            "{out}"
        );
        assert!(out.contains("a=candidate:1 2 udp"), "{out}");
        assert_eq!(offer_for_browser("nonsense"), "nonsense");
        // The merged SDP goes through FreeSWITCH's own answer repair unchanged in shape.
        assert_eq!(stream_ids(&offer_for_browser(&fs)), stream_ids(&fs));
    }

    #[test]
    fn has_telephone_event_table() {
        let te = "a=rtpmap:101 telephone-event/8000";
        let cases: &[(String, bool)] = &[
            (format!("v=0\r\nm=audio 9 RTP/AVP 0 101\r\n{te}\r\n"), true),
            (
                format!(
                    "v=0\nm=audio 9 RTP/AVP 0 101\n{}\n",
                    te.replace("telephone-event", "Telephone-Event")
                ),
                true,
            ),
            // A refused section, another kind, or no section of its own.
            (format!("v=0\r\nm=audio 0 RTP/AVP 0 101\r\n{te}\r\n"), false),
            (format!("v=0\r\nm=video 9 RTP/AVP 101\r\n{te}\r\n"), false),
            (format!("v=0\r\n{te}\r\nm=audio 9 RTP/AVP 0\r\n"), false),
            (
                "v=0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n".into(),
                false,
            ),
            (te.into(), false),
        ];
        for (sdp, want) in cases {
            assert_eq!(has_telephone_event(sdp), *want, "{sdp:?}");
        }
        assert!(has_telephone_event(include_str!(
            "../tests/fixtures/chromium_answer.sdp"
        )));
    }

    #[test]
    fn add_telephone_event_table() {
        let te = |m: &str, rest: &[&str]| {
            let mut section: Vec<String> = std::iter::once(m)
                .chain(rest.iter().copied())
                .map(str::to_owned)
                .collect();
            add_telephone_event(&mut section);
            section
        };
        let opus = [
            "a=rtpmap:96 opus/48000/2",
            "a=fmtp:96 useinbandfec=1",
            "a=ptime:20",
        ];
        // Added at 101, after the codec lines.
        assert_eq!(
            te("m=audio 9 RTP/SAVPF 96", &opus),
            [
                "m=audio 9 RTP/SAVPF 96 101",
                "a=rtpmap:96 opus/48000/2",
                "a=fmtp:96 useinbandfec=1",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-15",
                "a=ptime:20",
            ]
        );
        // 101 taken: the first free dynamic payload type.
        let out = te("m=audio 9 RTP/SAVPF 101 96", &["a=rtpmap:101 opus/48000/2"]);
        assert_eq!(out[0], "m=audio 9 RTP/SAVPF 101 96 97");
        assert_eq!(out[2], "a=rtpmap:97 telephone-event/8000");
        // No codec lines (static payload types only): at the end.
        let out = te("m=audio 9 RTP/AVP 0", &["a=sendrecv"]);
        assert_eq!(
            out[1..],
            [
                "a=sendrecv",
                "a=rtpmap:101 telephone-event/8000",
                "a=fmtp:101 0-15"
            ]
        );
        // Already there (any case), video, or an unreadable m= line: unchanged.
        let has = ["a=rtpmap:126 Telephone-Event/8000"];
        assert_eq!(
            te("m=audio 9 RTP/SAVPF 96 126", &has)[0],
            "m=audio 9 RTP/SAVPF 96 126"
        );
        assert_eq!(
            te("m=video 9 RTP/SAVPF 96", &[]),
            ["m=video 9 RTP/SAVPF 96"]
        );
        assert_eq!(te("m=audio 9", &[]), ["m=audio 9"]);
        // Every dynamic payload type taken: nothing to add.
        let all: Vec<String> = (96..=127).map(|p| p.to_string()).collect();
        let full = format!("m=audio 9 RTP/AVP {}", all.join(" "));
        assert_eq!(te(&full, &[]), [full]);
    }

    #[test]
    fn classify_table() {
        let cases: &[(&str, Result<(), Unusable>)] = &[
            (
                "candidate:1 1 udp 2122194687 127.0.0.1 55085 typ host generation 0",
                Ok(()),
            ),
            ("a=candidate:1 1 UDP 2122194687 ::1 55085 typ host", Ok(())),
            (
                "candidate:3 1 udp 2122 fd00::2 42462 typ host generation 0 ufrag KV7c",
                Ok(()),
            ),
            (
                "candidate:1 1 udp 1 192.0.2.1 5000 typ srflx raddr 10.0.0.1 rport 5000",
                Ok(()),
            ),
            (
                "candidate:1 1 tcp 1518214911 127.0.0.1 9 typ host tcptype active",
                Err(Unusable::NotUdp("tcp".into())),
            ),
            (
                "candidate:1 1 udp 2122 4b1f1c2e-aaaa.local 5000 typ host",
                Err(Unusable::Mdns("4b1f1c2e-aaaa.local".into())),
            ),
            (
                "candidate:1 1 udp 2122 turn.example.org 5000 typ relay",
                Err(Unusable::HostName("turn.example.org".into())),
            ),
            ("candidate:1 1 udp", Err(Unusable::Malformed)),
            ("", Err(Unusable::Malformed)),
            ("foo", Err(Unusable::Malformed)),
            (
                "candidate:1 x udp 1 1.2.3.4 5 typ host",
                Err(Unusable::Malformed),
            ),
            (
                "candidate:1 1 udp 1 1.2.3.4 99999 typ host",
                Err(Unusable::Malformed),
            ),
            (
                "candidate:1 1 udp 1 1.2.3.4 5 typ host\r\na=evil",
                Err(Unusable::Malformed),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&classify(input), want, "{input}");
        }
    }

    fn candidate_lines(sdp: &str) -> Vec<&str> {
        sdp.lines()
            .filter(|l| l.starts_with("a=candidate"))
            .collect()
    }

    #[test]
    fn candidates_inside_an_sdp() {
        let sdp = "v=0\r\nm=audio 9 RTP/SAVPF 111\r\na=mid:a\r\na=candidate:1 1 udp 1 10.0.0.1 5 typ host\r\nm=video 9 RTP/SAVPF 96\r\na=candidate:2 1 udp 1 10.0.0.1 6 typ host\r\n";
        let c = candidates_of(sdp);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].candidate, "candidate:1 1 udp 1 10.0.0.1 5 typ host");
        assert_eq!(
            (c[0].sdp_mid.as_deref(), c[0].sdp_m_line_index),
            (Some("a"), Some(0))
        );
        assert_eq!(
            (c[1].sdp_mid.as_deref(), c[1].sdp_m_line_index),
            (None, Some(1))
        );
        assert!(candidates_of("not sdp").is_empty());
        assert!(
            candidates_of(OFFER).is_empty(),
            "the Chromium capture trickles all of them"
        );
    }

    #[test]
    fn stream_ids_of_sdps() {
        let fs = "v=0\r\na=msid-semantic: WMS XkvxA\r\nm=audio 1 RTP/SAVPF 96\r\na=ssrc:1 msid:XkvxA a0\r\n";
        assert_eq!(stream_ids(fs), ["XkvxA"]);
        let chrome =
            "v=0\r\na=msid-semantic: WMS *\r\nm=audio 1 RTP/SAVPF 96\r\na=msid:c823 t1\r\n";
        assert_eq!(stream_ids(chrome), ["c823"]);
        assert!(stream_ids(
            "v=0\r\na=msid-semantic: WMS\r\nm=audio 1 RTP/SAVPF 96\r\na=msid:- t\r\n"
        )
        .is_empty());
        assert_eq!(
            stream_ids(OFFER).len(),
            1,
            "the Chromium capture has one stream"
        );
    }

    #[test]
    fn hold_and_resume_are_direction_changes() {
        let with_cands = OFFER.replace(
            "a=mid:0\r\n",
            "a=mid:0\r\na=candidate:1 1 udp 1 10.0.0.1 5 typ host\r\n",
        );
        let hold = OFFER
            .replace("a=sendrecv", "a=sendonly")
            .replace(" 2 IN IP4", " 3 IN IP4");
        let cases: &[(&str, &str, Option<Direction>)] = &[
            ("hold", &hold, Some(Direction::SendOnly)),
            ("resume", OFFER, Some(Direction::SendRecv)),
            (
                "inactive",
                &OFFER.replace("a=sendrecv", "a=inactive"),
                Some(Direction::Inactive),
            ),
            (
                "candidates do not matter",
                &with_cands,
                Some(Direction::SendRecv),
            ),
            (
                "nor the default address Chromium fills in later",
                &hold
                    .replace("m=audio 9 ", "m=audio 55085 ")
                    .replace("c=IN IP4 0.0.0.0", "c=IN IP4 127.0.0.1")
                    .replace("a=rtcp:9 IN IP4 0.0.0.0", "a=rtcp:55085 IN IP4 127.0.0.1"),
                Some(Direction::SendOnly),
            ),
            (
                "another codec list",
                &OFFER.replace(
                    "m=audio 9 UDP/TLS/RTP/SAVPF 111 ",
                    "m=audio 9 UDP/TLS/RTP/SAVPF ",
                ),
                None,
            ),
            (
                "header extensions dropped",
                &OFFER
                    .lines()
                    .filter(|l| !l.starts_with("a=extmap"))
                    .collect::<Vec<_>>()
                    .join("\r\n"),
                Some(Direction::SendRecv),
            ),
            (
                "ICE restart",
                &OFFER.replace("a=ice-ufrag:", "a=ice-ufrag:x"),
                None,
            ),
            (
                "new fingerprint",
                &OFFER.replace("a=fingerprint:sha-256 ", "a=fingerprint:sha-256 00:"),
                None,
            ),
            (
                "codec change",
                &OFFER.replace("a=rtpmap:111 opus", "a=rtpmap:111 OPUS"),
                None,
            ),
            ("not SDP", "hello", None),
        ];
        for (name, new, want) in cases {
            assert_eq!(direction_change(OFFER, new), *want, "{name}");
        }
        assert!(Direction::SendOnly.is_hold() && Direction::Inactive.is_hold());
        assert!(!Direction::SendRecv.is_hold() && !Direction::RecvOnly.is_hold());
        assert_eq!(Direction::SendOnly.answer(), Direction::RecvOnly);
        assert_eq!(Direction::Inactive.answer(), Direction::Inactive);
    }

    #[test]
    fn answers_with_a_new_direction() {
        let fs = "v=0\r\no=FreeSWITCH 17 18 IN IP4 127.0.0.1\r\ns=FreeSWITCH\r\nt=0 0\r\nm=audio 1 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\na=setup:active\r\n";
        let held = with_direction(fs, Direction::RecvOnly);
        assert_eq!(direction(&held), Direction::RecvOnly);
        assert_eq!(held.matches("a=recvonly").count(), 1);
        assert!(!held.contains("a=sendrecv"));
        assert!(held.contains("o=FreeSWITCH 17 19 IN IP4"), "{held}");
        let back = with_direction(&held, Direction::SendRecv);
        assert_eq!(direction(&back), Direction::SendRecv);
        assert!(back.contains("o=FreeSWITCH 17 20 IN IP4"));
        // No direction line at all: one is added to the section.
        let bare = fs.replace("a=sendrecv\r\n", "");
        assert_eq!(direction(&bare), Direction::SendRecv);
        assert_eq!(
            direction(&with_direction(&bare, Direction::Inactive)),
            Direction::Inactive
        );
        assert_eq!(with_direction("junk", Direction::Inactive), "junk");
    }

    #[test]
    fn completeness_of_offers() {
        let host = "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n";
        let mdns = "a=candidate:1 1 udp 2130706431 x.local 5000 typ host\r\n";
        let base = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
        let cases: &[(&str, String, bool)] = &[
            (
                "aiortc: no trickle option, no candidates",
                base.to_owned(),
                false,
            ),
            (
                "trickle option, no candidates",
                format!("{base}a=ice-options:trickle\r\n"),
                false,
            ),
            (
                "trickle option with a candidate",
                format!("{base}a=ice-options:trickle\r\n{host}"),
                false,
            ),
            (
                "no trickle option, a usable candidate",
                format!("{base}{host}"),
                true,
            ),
            (
                "no trickle option, only mDNS",
                format!("{base}{mdns}"),
                false,
            ),
            (
                "marked",
                format!("{base}a=ice-options:trickle\r\n{host}a=end-of-candidates\r\n"),
                true,
            ),
            (
                "marked without candidates",
                format!("{base}a=end-of-candidates\r\n"),
                true,
            ),
            (
                "trickle among other options",
                format!("{base}a=ice-options:ice2 trickle\r\n{host}"),
                false,
            ),
            ("real Chromium offer", OFFER.to_owned(), false),
        ];
        for (name, sdp, want) in cases {
            assert_eq!(is_complete(sdp), *want, "{name}");
        }
    }

    #[test]
    fn covers_every_transport_table() {
        let host = "candidate:1 1 udp 2122194687 192.0.2.2 53545 typ host";
        let tcp = "candidate:2 1 tcp 1518214911 192.0.2.2 9 typ host tcptype active";
        let mdns = "candidate:3 1 udp 2122194687 x.local 53545 typ host";
        let audio = "v=0\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n";
        let video = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n";
        let two = format!("{audio}{video}");
        let bundled = two.replacen("t=0 0\r\n", "t=0 0\r\na=group:BUNDLE 0 1\r\n", 1);
        let refused_video = format!("{audio}m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n");
        let inline = format!("{audio}a={host}\r\n");
        let t = |c: &str, mid: &str| cand(c, Some(mid), None);
        let cases: Vec<(&str, &str, Vec<TrickleCandidate>, bool)> = vec![
            ("nothing yet", audio, vec![], false),
            ("a trickled host candidate", audio, vec![t(host, "0")], true),
            (
                "by index, no mid",
                audio,
                vec![cand(host, None, Some(0))],
                true,
            ),
            ("only TCP", audio, vec![t(tcp, "0")], false),
            ("only mDNS", audio, vec![t(mdns, "0")], false),
            ("inside the offer", &inline, vec![], true),
            ("two sections, one covered", &two, vec![t(host, "0")], false),
            (
                "two sections, both covered",
                &two,
                vec![t(host, "0"), t(host, "1")],
                true,
            ),
            (
                "bundled: the first carries all",
                &bundled,
                vec![t(host, "0")],
                true,
            ),
            (
                "refused section needs none",
                &refused_video,
                vec![t(host, "0")],
                true,
            ),
            ("unknown mid", audio, vec![t(host, "7")], false),
            ("not SDP", "hello", vec![t(host, "0")], false),
            ("real Chromium offer, nothing", OFFER, vec![], false),
        ];
        for (name, offer, trickled, want) in cases {
            assert_eq!(covers_every_transport(offer, &trickled), want, "{name}");
        }
    }

    #[test]
    fn merges_real_chromium_trickle() {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/chromium_candidates.json"))
                .unwrap();
        let mut trickled = Vec::new();
        for ev in json["events"].as_array().unwrap() {
            for c in ev["candidates"].as_array().unwrap() {
                trickled.push(cand(
                    c["candidate"].as_str().unwrap(),
                    c["sdpMid"].as_str(),
                    c["sdpMLineIndex"].as_u64(),
                ));
            }
        }
        assert_eq!(trickled.len(), 9);
        let m = merge_candidates(OFFER, &trickled).unwrap();
        assert_eq!(m.usable, 4, "four UDP host candidates");
        assert_eq!(m.dropped.len(), 4, "four TCP candidates: {:?}", m.dropped);
        let lines = candidate_lines(&m.sdp);
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].contains("127.0.0.1 55085"),
            "order kept: {lines:?}"
        );
        assert!(m.sdp.contains("a=end-of-candidates\r\n"));
        // Every other line survives unchanged, in order, with CRLF.
        let orig: Vec<&str> = OFFER.split("\r\n").filter(|l| !l.is_empty()).collect();
        let kept: Vec<&str> = m
            .sdp
            .split("\r\n")
            .filter(|l| {
                !l.is_empty() && !l.starts_with("a=candidate") && *l != "a=end-of-candidates"
            })
            .collect();
        assert_eq!(orig, kept);
        assert!(!m.sdp.contains("\n\n") && m.sdp.ends_with("\r\n"));
    }

    const TWO_SECTIONS: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE a v\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:a\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:v\r\na=rtpmap:96 VP8/90000\r\n";

    #[test]
    fn merge_table() {
        struct Case {
            name: &'static str,
            offer: &'static str,
            trickled: Vec<TrickleCandidate>,
            usable: usize,
            audio: usize,
            video: usize,
        }
        let u1 = "candidate:1 1 udp 9 10.0.0.1 5000 typ host";
        let u2 = "candidate:2 1 udp 9 10.0.0.2 5002 typ host";
        let cases = vec![
            Case {
                name: "by mid",
                offer: TWO_SECTIONS,
                trickled: vec![cand(u1, Some("v"), Some(0))],
                usable: 1,
                audio: 0,
                video: 1,
            },
            Case {
                name: "by index when mid is unknown",
                offer: TWO_SECTIONS,
                trickled: vec![cand(u1, Some("zz"), Some(1)), cand(u2, None, Some(0))],
                usable: 2,
                audio: 1,
                video: 1,
            },
            Case {
                name: "no section",
                offer: TWO_SECTIONS,
                trickled: vec![cand(u1, Some("zz"), Some(7)), cand(u2, None, None)],
                usable: 0,
                audio: 0,
                video: 0,
            },
            Case {
                name: "duplicates once",
                offer: TWO_SECTIONS,
                trickled: vec![cand(u1, Some("a"), None), cand(u1, Some("a"), None)],
                usable: 1,
                audio: 1,
                video: 0,
            },
            Case {
                name: "end marker only",
                offer: TWO_SECTIONS,
                trickled: vec![cand("", None, None)],
                usable: 0,
                audio: 0,
                video: 0,
            },
        ];
        for c in cases {
            let m = merge_candidates(c.offer, &c.trickled).unwrap();
            assert_eq!(m.usable, c.usable, "{}", c.name);
            let video_at = m.sdp.find("m=video").unwrap();
            let (a, v) = m.sdp.split_at(video_at);
            assert_eq!(candidate_lines(a).len(), c.audio, "{}: {}", c.name, m.sdp);
            assert_eq!(candidate_lines(v).len(), c.video, "{}: {}", c.name, m.sdp);
        }
    }

    #[test]
    fn offer_candidates_are_filtered_and_kept() {
        let offer = "v=0\ns=-\nm=audio 5000 RTP/SAVPF 0\na=mid:0\na=candidate:1 1 udp 9 10.0.0.1 5000 typ host\na=candidate:2 1 udp 9 x.local 5000 typ host\na=end-of-candidates\n";
        let m = merge_candidates(offer, &[]).unwrap();
        assert_eq!(m.usable, 1);
        assert_eq!(m.dropped.len(), 1);
        assert!(m.sdp.contains("\n") && !m.sdp.contains("\r\n"), "LF kept");
        assert_eq!(m.sdp.matches("a=end-of-candidates").count(), 1);
        assert!(!m.sdp.contains("x.local"));
    }

    #[test]
    fn mdns_only_offer_has_no_usable_candidate() {
        let t = [cand(
            "candidate:1 1 udp 2122 abc.local 5000 typ host",
            Some("0"),
            Some(0),
        )];
        let m = merge_candidates(OFFER, &t).unwrap();
        assert_eq!(m.usable, 0);
    }

    #[test]
    fn merge_rejects_non_sdp() {
        assert_eq!(merge_candidates("hello", &[]), Err(SdpError::NotSdp));
        assert_eq!(
            merge_candidates("v=0\r\ns=-\r\n", &[]),
            Err(SdpError::NoMediaSection)
        );
    }

    #[test]
    fn repair_adds_mid_and_bundle() {
        let fixed = repair_answer(FS_ANSWER, OFFER);
        let lines: Vec<&str> = fixed.split("\r\n").collect();
        let m = lines.iter().position(|l| l.starts_with("m=audio")).unwrap();
        assert_eq!(lines[m + 1], "a=mid:0");
        let t = lines.iter().position(|l| l.starts_with("t=")).unwrap();
        assert_eq!(lines[t + 1], "a=group:BUNDLE 0");
        assert!(t < m);
        // Nothing else changed.
        let orig: Vec<&str> = FS_ANSWER.split("\r\n").collect();
        let rest: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| *l != "a=mid:0" && *l != "a=group:BUNDLE 0")
            .collect();
        assert_eq!(orig, rest);
    }

    #[test]
    fn fingerprint_alteration() {
        let cases = [
            (
                "a=fingerprint:sha-256 58:2D:1D",
                "a=fingerprint:sha-256 58:2D:1C",
            ),
            (
                "a=fingerprint:sha-256 58:2D:FE",
                "a=fingerprint:sha-256 58:2D:FF",
            ),
            (
                "a=fingerprint:sha-256 58:2D:ff",
                "a=fingerprint:sha-256 58:2D:FE",
            ),
            ("a=fingerprint:sha-256 zz", "a=fingerprint:sha-256 zz"),
            // Found by cargo fuzz: a multi-byte character at the end used to panic.
            (
                "a=fingerprint:sha-256 1D:8\u{fffd}",
                "a=fingerprint:sha-256 1D:8\u{fffd}",
            ),
            ("a=fingerprint:\u{e9}", "a=fingerprint:\u{e9}"),
        ];
        for (line, want) in cases {
            let sdp =
                format!("v=0\r\ns=-\r\nm=audio 1 RTP/SAVPF 0\r\n{line}\r\na=setup:actpass\r\n");
            let out = alter_fingerprint(&sdp);
            assert!(out.contains(&format!("{want}\r\n")), "{line}: {out}");
            assert_eq!(out.replace(want, line), sdp, "nothing else changes");
        }
        assert_eq!(alter_fingerprint("garbage"), "garbage");
    }

    #[test]
    fn repair_table() {
        let no_bundle_offer = OFFER.replace("a=group:BUNDLE 0\r\n", "");
        let with_mid = FS_ANSWER.replace("a=rtpmap:96", "a=mid:0\r\na=rtpmap:96");
        let cases: &[(&str, &str, &str, usize, usize)] = &[
            ("FS answer to bundled offer", FS_ANSWER, OFFER, 1, 1),
            ("offer without bundle", FS_ANSWER, &no_bundle_offer, 1, 0),
            ("answer already has mid", &with_mid, OFFER, 1, 1),
            (
                "two sections: mids but no bundle",
                &format!("{FS_ANSWER}m=video 0 RTP/SAVPF 96\r\n"),
                TWO_SECTIONS,
                2,
                0,
            ),
            ("garbage answer left alone", "nonsense", OFFER, 0, 0),
        ];
        for (name, answer, offer, mids, bundles) in cases {
            let fixed = repair_answer(answer, offer);
            assert_eq!(fixed.matches("a=mid:").count(), *mids, "{name}: {fixed}");
            assert_eq!(
                fixed.matches("a=group:BUNDLE").count(),
                *bundles,
                "{name}: {fixed}"
            );
        }
    }
}
