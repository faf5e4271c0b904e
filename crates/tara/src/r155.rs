//! UNECE Regulation No. 155, Annex 5, Part A (Table A1): the threats and the vulnerabilities
//! or attack methods under them, as numbered in the adopted text (OJ L 82, 9.3.2021). The
//! numbering has gaps the text has: there is no threat 14, threat 22's only item is 22.2,
//! and 30.1–30.3 ("physical loss of data") appear only in Part C, Table C3. A model may only
//! cite numbers listed here, so a typo or an invented number fails the check.

/// One Annex 5 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its number (e.g. "12.1").
    pub number: &'static str,
    /// The high-level threat it belongs to (Table A1's second column), shortened.
    pub threat: &'static str,
    /// The vulnerability or attack method, shortened.
    pub text: &'static str,
}

/// The group headings of Table A1 (4.3.1–4.3.7) and the first threat number of each.
pub const GROUPS: &[(u8, &str)] = &[
    (1, "4.3.1 Back-end servers related to vehicles in the field"),
    (4, "4.3.2 Vehicle communication channels"),
    (12, "4.3.3 Update procedures"),
    (
        15,
        "4.3.4 Unintended human actions facilitating a cyber attack",
    ),
    (16, "4.3.5 External connectivity and connections"),
    (
        19,
        "4.3.6 Potential targets of, or motivations for, an attack (vehicle data/code)",
    ),
    (
        26,
        "4.3.7 Potential vulnerabilities if not sufficiently protected or hardened",
    ),
];

const T1: &str = "Back-end servers used as a means to attack a vehicle or extract data";
const T2: &str =
    "Services from back-end server being disrupted, affecting the operation of a vehicle";
const T3: &str = "Vehicle related data held on back-end servers being lost or compromised";
const T4: &str = "Spoofing of messages or data received by the vehicle";
const T5: &str = "Communication channels used to conduct unauthorised manipulation, deletion or other amendments to vehicle held code/data";
const T6: &str = "Communication channels permit untrusted/unreliable messages to be accepted or are vulnerable to session hijacking/replay attacks";
const T7: &str = "Information can be readily disclosed";
const T8: &str =
    "Denial of service attacks via communication channels to disrupt vehicle functions";
const T9: &str = "An unprivileged user is able to gain privileged access to vehicle systems";
const T10: &str = "Viruses embedded in communication media are able to infect vehicle systems";
const T11: &str =
    "Messages received by the vehicle, or transmitted within it, contain malicious content";
const T12: &str = "Misuse or compromise of update procedures";
const T13: &str = "It is possible to deny legitimate updates";
const T15: &str =
    "Legitimate actors are able to take actions that would unwittingly facilitate a cyber-attack";
const T16: &str = "Manipulation of the connectivity of vehicle functions enables a cyber-attack";
const T17: &str = "Hosted 3rd party software used as a means to attack vehicle systems";
const T18: &str =
    "Devices connected to external interfaces used as a means to attack vehicle systems";
const T19: &str = "Extraction of vehicle data/code";
const T20: &str = "Manipulation of vehicle data/code";
const T21: &str = "Erasure of data/code";
const T22: &str = "Introduction of malware";
const T23: &str = "Introduction of new software or overwrite existing software";
const T24: &str = "Disruption of systems or operations";
const T25: &str = "Manipulation of vehicle parameters";
const T26: &str = "Cryptographic technologies can be compromised or are insufficiently applied";
const T27: &str = "Parts or supplies could be compromised to permit vehicles to be attacked";
const T28: &str = "Software or hardware development permits vulnerabilities";
const T29: &str = "Network design introduces vulnerabilities";
const T30: &str = "Physical loss of data (Part C, Table C3)";
const T31: &str = "Unintended transfer of data can occur";
const T32: &str = "Physical manipulation of systems can enable an attack";

macro_rules! entries {
    ($($number:literal, $threat:ident, $text:literal;)*) => {
        /// Every entry, in the regulation's order.
        pub const ENTRIES: &[Entry] = &[$(Entry { number: $number, threat: $threat, text: $text }),*];
    };
}

entries! {
    "1.1", T1, "Abuse of privileges by staff (insider attack)";
    "1.2", T1, "Unauthorised internet access to the server (backdoors, unpatched software, SQL attacks or other means)";
    "1.3", T1, "Unauthorised physical access to the server (e.g. USB sticks or other media)";
    "2.1", T2, "Attack on back-end server stops it functioning, e.g. it cannot interact with vehicles and provide services they rely on";
    "3.1", T3, "Abuse of privileges by staff (insider attack)";
    "3.2", T3, "Loss of information in the cloud (attacks or accidents at third-party cloud providers)";
    "3.3", T3, "Unauthorised internet access to the server";
    "3.4", T3, "Unauthorised physical access to the server";
    "3.5", T3, "Information breach by unintended sharing of data (e.g. admin errors)";
    "4.1", T4, "Spoofing of messages by impersonation (e.g. V2X, GNSS messages)";
    "4.2", T4, "Sybil attack (spoofing other vehicles as if there are many on the road)";
    "5.1", T5, "Communication channels permit code injection, e.g. a tampered software binary injected into the stream";
    "5.2", T5, "Communication channels permit manipulation of vehicle held data/code";
    "5.3", T5, "Communication channels permit overwrite of vehicle held data/code";
    "5.4", T5, "Communication channels permit erasure of vehicle held data/code";
    "5.5", T5, "Communication channels permit introduction of data/code to the vehicle (write data code)";
    "6.1", T6, "Accepting information from an unreliable or untrusted source";
    "6.2", T6, "Man in the middle attack / session hijacking";
    "6.3", T6, "Replay attack, e.g. against a communication gateway to downgrade software of an ECU or firmware of the gateway";
    "7.1", T7, "Interception of information / interfering radiations / monitoring communications";
    "7.2", T7, "Gaining unauthorised access to files or data";
    "8.1", T8, "Sending a large number of garbage data to the vehicle information system, so that it cannot provide services normally";
    "8.2", T8, "Black hole attack: blocking messages between vehicles";
    "9.1", T9, "An unprivileged user is able to gain privileged access, e.g. root access";
    "10.1", T10, "Virus embedded in communication media infects vehicle systems";
    "11.1", T11, "Malicious internal (e.g. CAN) messages";
    "11.2", T11, "Malicious V2X messages (infrastructure to vehicle, vehicle to vehicle)";
    "11.3", T11, "Malicious diagnostic messages";
    "11.4", T11, "Malicious proprietary messages (e.g. normally sent from the OEM or a supplier)";
    "12.1", T12, "Compromise of over the air software update procedures, including fabricating the update program or firmware";
    "12.2", T12, "Compromise of local/physical software update procedures, including fabricating the update program or firmware";
    "12.3", T12, "The software is manipulated before the update process (and is therefore corrupted), although the update process is intact";
    "12.4", T12, "Compromise of cryptographic keys of the software provider to allow invalid update";
    "13.1", T13, "Denial of service against the update server or network to prevent rollout of critical software updates";
    "15.1", T15, "Innocent victim (owner, operator, maintenance engineer) tricked into loading malware or enabling an attack";
    "15.2", T15, "Defined security procedures are not followed";
    "16.1", T16, "Manipulation of functions designed to remotely operate systems (remote key, immobiliser, charging pile)";
    "16.2", T16, "Manipulation of vehicle telematics";
    "16.3", T16, "Interference with short range wireless systems or sensors";
    "17.1", T17, "Corrupted applications, or those with poor software security, used to attack vehicle systems";
    "18.1", T18, "External interfaces such as USB or other ports used as a point of attack, e.g. code injection";
    "18.2", T18, "Media infected with a virus connected to a vehicle system";
    "18.3", T18, "Diagnostic access (e.g. dongles in the OBD port) used to facilitate an attack";
    "19.1", T19, "Extraction of copyright or proprietary software from vehicle systems (product piracy)";
    "19.2", T19, "Unauthorised access to the owner's privacy information (identity, location, vehicle's electronic ID, …)";
    "19.3", T19, "Extraction of cryptographic keys";
    "20.1", T20, "Illegal/unauthorised changes to the vehicle's electronic ID";
    "20.2", T20, "Identity fraud, e.g. another identity towards toll systems or the manufacturer's back-end";
    "20.3", T20, "Action to circumvent monitoring systems (e.g. hacking/tampering/blocking of messages)";
    "20.4", T20, "Data manipulation to falsify the vehicle's driving data (mileage, speed, directions)";
    "20.5", T20, "Unauthorised changes to system diagnostic data";
    "21.1", T21, "Unauthorised deletion/manipulation of system event logs";
    "22.2", T22, "Introduce malicious software or malicious software activity";
    "23.1", T23, "Fabrication of software of the vehicle control system or information system";
    "24.1", T24, "Denial of service, e.g. flooding a CAN bus or provoking faults on an ECU by a high rate of messaging";
    "25.1", T25, "Unauthorised access to falsify the configuration parameters of the vehicle's key functions";
    "25.2", T25, "Unauthorised access to falsify the charging parameters";
    "26.1", T26, "Combination of short encryption keys and long period of validity enables an attacker to break encryption";
    "26.2", T26, "Insufficient use of cryptographic algorithms to protect sensitive systems";
    "26.3", T26, "Using already or soon to be deprecated cryptographic algorithms";
    "27.1", T27, "Hardware or software engineered to enable an attack, or failing to meet design criteria to stop an attack";
    "28.1", T28, "Software bugs, a basis for potentially exploitable vulnerabilities";
    "28.2", T28, "Using remainders from development (debug ports, JTAG, development certificates, developer passwords)";
    "29.1", T29, "Superfluous internet ports left open, providing access to network systems";
    "29.2", T29, "Circumvent network separation to gain control (e.g. unprotected gateways)";
    "30.1", T30, "Damage caused by a third party: sensitive data lost or compromised through accident or theft";
    "30.2", T30, "Loss from DRM (digital right management) conflicts";
    "30.3", T30, "Sensitive data (integrity) lost through IT components' wear and tear, e.g. key alteration";
    "31.1", T31, "Information breach: private or sensitive data leaked when the car changes user";
    "32.1", T32, "Manipulation of electronic hardware, e.g. unauthorised hardware added to a vehicle to enable a man-in-the-middle attack";
}

/// The entry numbered `number`.
pub fn entry(number: &str) -> Option<&'static Entry> {
    ENTRIES.iter().find(|e| e.number == number)
}

/// The group heading of an entry.
pub fn group(number: &str) -> &'static str {
    let threat: u8 = number
        .split('.')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    GROUPS
        .iter()
        .rev()
        .find(|(first, _)| threat >= *first)
        .map_or("", |(_, g)| g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_has_the_regulations_gaps() {
        assert!(entry("12.1").is_some());
        assert!(entry("22.2").is_some());
        assert!(entry("22.1").is_none(), "threat 22's only item is 22.2");
        assert!(
            ENTRIES.iter().all(|e| !e.number.starts_with("14.")),
            "there is no threat 14"
        );
        assert_eq!(ENTRIES.len(), 70);
        let mut numbers: Vec<_> = ENTRIES.iter().map(|e| e.number).collect();
        numbers.dedup();
        assert_eq!(numbers.len(), ENTRIES.len());
        assert_eq!(group("12.4"), "4.3.3 Update procedures");
        assert_eq!(group("1.1"), GROUPS[0].1);
        assert!(group("32.1").starts_with("4.3.7"));
    }
}
