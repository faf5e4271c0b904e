//! The rating scales of ISO/SAE 21434: impact (clause 15.5, Annex F), attack feasibility by
//! the attack-potential method (clause 15.7, Annex G), risk value (clause 15.8, the example
//! matrix of Annex H) and CAL (Annex E). Every number here is the standard's example table;
//! an organisation that calibrates its own would change this module and nothing else.

use serde::{Deserialize, Serialize};

/// Impact rating of a damage scenario in one category (Annex F), least to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Impact {
    /// No or negligible effect.
    Negligible,
    /// Moderate effect (e.g. light injuries, moderate financial loss, partial degradation).
    Moderate,
    /// Major effect (e.g. severe injuries with survival likely, loss of a vehicle function).
    Major,
    /// Severe effect (e.g. life-threatening injuries, loss of vital function, ruinous loss).
    Severe,
}

impl Impact {
    /// Every level, least to worst.
    pub const ALL: [Impact; 4] = [
        Impact::Negligible,
        Impact::Moderate,
        Impact::Major,
        Impact::Severe,
    ];

    /// The level's name as the standard writes it.
    pub fn label(self) -> &'static str {
        match self {
            Impact::Negligible => "Negligible",
            Impact::Moderate => "Moderate",
            Impact::Major => "Major",
            Impact::Severe => "Severe",
        }
    }
}

/// The four impact categories of clause 15.5 (S, F, O, P), each rated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpactRatings {
    /// Safety of road users.
    pub safety: Impact,
    /// Financial damage to road users (and, as the OEM's own view, to the manufacturer).
    pub financial: Impact,
    /// Operational: loss or degradation of vehicle functions.
    pub operational: Impact,
    /// Privacy of road users.
    pub privacy: Impact,
}

impl ImpactRatings {
    /// The damage scenario's impact: the worst of its categories.
    pub fn overall(&self) -> Impact {
        self.safety
            .max(self.financial)
            .max(self.operational)
            .max(self.privacy)
    }
}

/// Attack feasibility rating (clause 15.7), least to most feasible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feasibility {
    /// Attack potential 25 or more.
    VeryLow,
    /// Attack potential 20 to 24.
    Low,
    /// Attack potential 14 to 19.
    Medium,
    /// Attack potential 0 to 13.
    High,
}

impl Feasibility {
    /// Every level, least to most feasible.
    pub const ALL: [Feasibility; 4] = [
        Feasibility::VeryLow,
        Feasibility::Low,
        Feasibility::Medium,
        Feasibility::High,
    ];

    /// Annex G: the rating of a summed attack potential (0–13 high, 14–19 medium, 20–24
    /// low, 25 and more very low).
    pub fn from_potential(potential: u8) -> Self {
        match potential {
            0..=13 => Feasibility::High,
            14..=19 => Feasibility::Medium,
            20..=24 => Feasibility::Low,
            _ => Feasibility::VeryLow,
        }
    }

    /// The level's name as the standard writes it.
    pub fn label(self) -> &'static str {
        match self {
            Feasibility::VeryLow => "Very low",
            Feasibility::Low => "Low",
            Feasibility::Medium => "Medium",
            Feasibility::High => "High",
        }
    }
}

/// Defines one attack-potential factor: its levels in rising order of difficulty for the
/// attacker, each with its Annex G value and the name the model file uses.
macro_rules! factor {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $value:literal, $label:literal;)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $label)] $variant,)*
        }

        impl $name {
            /// Every level, easiest for the attacker first.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The level's value in the attack-potential sum (Annex G).
            pub fn value(self) -> u8 {
                match self { $($name::$variant => $value,)* }
            }

            /// The level's name as the model file writes it.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
        }
    };
}

factor! {
    /// Elapsed time to identify and exploit the vulnerability (Table G.2).
    ElapsedTime {
        /// At most a day.
        Day = 0, "1-day";
        /// At most a week.
        Week = 1, "1-week";
        /// At most a month.
        Month = 4, "1-month";
        /// At most six months.
        HalfYear = 17, "6-months";
        /// More than six months.
        Longer = 19, "more";
    }
}

factor! {
    /// Specialist expertise the attacker needs (Table G.3).
    Expertise {
        /// Unknowledgeable compared to experts.
        Layman = 0, "layman";
        /// Familiar with the security behaviour of the product type.
        Proficient = 3, "proficient";
        /// Familiar with the underlying algorithms, protocols and hardware.
        Expert = 6, "expert";
        /// Different fields of expertise at expert level for distinct steps.
        MultipleExperts = 8, "multiple-experts";
    }
}

factor! {
    /// Knowledge of the item or component (Table G.4).
    Knowledge {
        /// Public information (e.g. from the internet).
        Public = 0, "public";
        /// Restricted: shared with partners under non-disclosure.
        Restricted = 3, "restricted";
        /// Confidential: shared within the developing organisation's teams.
        Confidential = 7, "confidential";
        /// Strictly confidential: known to few individuals only.
        StrictlyConfidential = 11, "strictly-confidential";
    }
}

factor! {
    /// Window of opportunity: access the attack needs, and for how long (Table G.5).
    Window {
        /// High availability through public or untrusted networks, no time limit.
        Unlimited = 0, "unlimited";
        /// Highly available but limited time, or physical access for a short time.
        Easy = 1, "easy";
        /// Low availability of the item, limited physical or logical access.
        Moderate = 4, "moderate";
        /// Very low availability; impractical.
        Difficult = 10, "difficult";
    }
}

factor! {
    /// Equipment the attacker needs (Table G.6).
    Equipment {
        /// Readily available (a laptop, a CAN adapter, public tools).
        Standard = 0, "standard";
        /// Obtainable without undue effort (test benches, a bought tool).
        Specialized = 4, "specialized";
        /// Specially made or not readily available (an HSM's key material, a signing key).
        Bespoke = 7, "bespoke";
        /// Several bespoke items for distinct steps.
        MultipleBespoke = 9, "multiple-bespoke";
    }
}

/// The five attack-potential factors of one attack path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Factors {
    /// Elapsed time.
    pub elapsed: ElapsedTime,
    /// Specialist expertise.
    pub expertise: Expertise,
    /// Knowledge of the item.
    pub knowledge: Knowledge,
    /// Window of opportunity.
    pub window: Window,
    /// Equipment.
    pub equipment: Equipment,
}

impl Factors {
    /// The attack potential: the sum of the factors' values.
    pub fn potential(&self) -> u8 {
        self.elapsed.value()
            + self.expertise.value()
            + self.knowledge.value()
            + self.window.value()
            + self.equipment.value()
    }

    /// The attack feasibility rating of the sum.
    pub fn feasibility(&self) -> Feasibility {
        Feasibility::from_potential(self.potential())
    }

    /// The factors an attacker faces once `raise` is in place: each factor the control names
    /// is at least its level (a control never makes an attack easier).
    pub fn raised(&self, raise: &Raise) -> Factors {
        Factors {
            elapsed: raise.elapsed.map_or(self.elapsed, |r| r.max(self.elapsed)),
            expertise: raise
                .expertise
                .map_or(self.expertise, |r| r.max(self.expertise)),
            knowledge: raise
                .knowledge
                .map_or(self.knowledge, |r| r.max(self.knowledge)),
            window: raise.window.map_or(self.window, |r| r.max(self.window)),
            equipment: raise
                .equipment
                .map_or(self.equipment, |r| r.max(self.equipment)),
        }
    }
}

/// What a control does to an attack path: the least level it forces on each factor it names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raise {
    /// Elapsed time at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed: Option<ElapsedTime>,
    /// Expertise at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expertise: Option<Expertise>,
    /// Knowledge at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge: Option<Knowledge>,
    /// Window of opportunity at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Equipment at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equipment: Option<Equipment>,
}

impl Raise {
    /// True when the control names no factor (it would lower nothing).
    pub fn is_empty(&self) -> bool {
        *self == Raise::default()
    }
}

/// Risk value 1 (lowest) to 5 from impact and feasibility: the example matrix of Annex H.
pub fn risk(impact: Impact, feasibility: Feasibility) -> u8 {
    use Feasibility as F;
    use Impact as I;
    match (impact, feasibility) {
        (I::Severe, F::VeryLow) => 2,
        (I::Severe, F::Low) => 3,
        (I::Severe, F::Medium) => 4,
        (I::Severe, F::High) => 5,
        (I::Major, F::VeryLow) => 1,
        (I::Major, F::Low) => 2,
        (I::Major, F::Medium) => 3,
        (I::Major, F::High) => 4,
        (I::Moderate, F::VeryLow | F::Low) => 1,
        (I::Moderate, F::Medium) => 2,
        (I::Moderate, F::High) => 3,
        (I::Negligible, _) => 1,
    }
}

/// Attack vector of a threat scenario (Annex G.3 / E): how close the attacker must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Vector {
    /// Physical access to the component.
    Physical,
    /// Local access (a diagnostic port, a workshop tool, the in-vehicle network).
    Local,
    /// Adjacent: a shared network or short-range radio.
    Adjacent,
    /// Network: remotely, over the internet or the cellular network.
    Network,
}

impl Vector {
    /// The vector's name.
    pub fn label(self) -> &'static str {
        match self {
            Vector::Physical => "physical",
            Vector::Local => "local",
            Vector::Adjacent => "adjacent",
            Vector::Network => "network",
        }
    }
}

/// Cybersecurity assurance level 1–4 from the impact and the attack vector, as the example
/// of Annex E (informative) lays them out: one level per step of impact or of reach, capped
/// at 4; `None` for a negligible impact (no CAL is needed).
pub fn cal(impact: Impact, vector: Vector) -> Option<u8> {
    use Impact as I;
    use Vector as V;
    Some(match (impact, vector) {
        (I::Negligible, _) => return None,
        (I::Moderate, V::Physical | V::Local) => 1,
        (I::Moderate, V::Adjacent) => 2,
        (I::Moderate, V::Network) => 3,
        (I::Major, V::Physical) => 1,
        (I::Major, V::Local) => 2,
        (I::Major, V::Adjacent) => 3,
        (I::Major, V::Network) => 4,
        (I::Severe, V::Physical) => 2,
        (I::Severe, V::Local) => 3,
        (I::Severe, V::Adjacent | V::Network) => 4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factors(
        elapsed: ElapsedTime,
        expertise: Expertise,
        knowledge: Knowledge,
        window: Window,
        equipment: Equipment,
    ) -> Factors {
        Factors {
            elapsed,
            expertise,
            knowledge,
            window,
            equipment,
        }
    }

    #[test]
    fn potential_sums_the_annex_g_values_and_maps_to_feasibility() {
        let easy = factors(
            ElapsedTime::Day,
            Expertise::Layman,
            Knowledge::Public,
            Window::Unlimited,
            Equipment::Standard,
        );
        assert_eq!(easy.potential(), 0);
        assert_eq!(easy.feasibility(), Feasibility::High);
        let hard = factors(
            ElapsedTime::Longer,
            Expertise::MultipleExperts,
            Knowledge::StrictlyConfidential,
            Window::Difficult,
            Equipment::MultipleBespoke,
        );
        assert_eq!(hard.potential(), 19 + 8 + 11 + 10 + 9);
        assert_eq!(hard.feasibility(), Feasibility::VeryLow);
        // The band edges of Annex G.
        for (p, f) in [
            (13, Feasibility::High),
            (14, Feasibility::Medium),
            (19, Feasibility::Medium),
            (20, Feasibility::Low),
            (24, Feasibility::Low),
            (25, Feasibility::VeryLow),
        ] {
            assert_eq!(Feasibility::from_potential(p), f, "potential {p}");
        }
    }

    #[test]
    fn a_raise_never_lowers_a_factor() {
        let f = factors(
            ElapsedTime::Month,
            Expertise::Expert,
            Knowledge::Public,
            Window::Unlimited,
            Equipment::Standard,
        );
        let r = Raise {
            expertise: Some(Expertise::Proficient),
            equipment: Some(Equipment::Bespoke),
            ..Raise::default()
        };
        let after = f.raised(&r);
        assert_eq!(after.expertise, Expertise::Expert);
        assert_eq!(after.equipment, Equipment::Bespoke);
        assert_eq!(after.potential(), f.potential() + 7);
        assert_eq!(f.raised(&Raise::default()), f);
    }

    #[test]
    fn risk_matrix_rises_with_impact_and_feasibility() {
        assert_eq!(risk(Impact::Severe, Feasibility::High), 5);
        assert_eq!(risk(Impact::Severe, Feasibility::VeryLow), 2);
        assert_eq!(risk(Impact::Moderate, Feasibility::Medium), 2);
        assert_eq!(risk(Impact::Negligible, Feasibility::High), 1);
        for i in Impact::ALL {
            for w in Feasibility::ALL.windows(2) {
                if let [lo, hi] = w {
                    assert!(risk(i, *lo) <= risk(i, *hi));
                }
            }
        }
        for f in Feasibility::ALL {
            for w in Impact::ALL.windows(2) {
                if let [lo, hi] = w {
                    assert!(risk(*lo, f) <= risk(*hi, f));
                }
            }
        }
    }

    #[test]
    fn cal_follows_table_e1() {
        assert_eq!(cal(Impact::Severe, Vector::Network), Some(4));
        assert_eq!(cal(Impact::Severe, Vector::Physical), Some(2));
        assert_eq!(cal(Impact::Major, Vector::Local), Some(2));
        assert_eq!(cal(Impact::Moderate, Vector::Physical), Some(1));
        assert_eq!(cal(Impact::Negligible, Vector::Network), None);
    }

    #[test]
    fn overall_impact_is_the_worst_category() {
        let r = ImpactRatings {
            safety: Impact::Negligible,
            financial: Impact::Major,
            operational: Impact::Moderate,
            privacy: Impact::Negligible,
        };
        assert_eq!(r.overall(), Impact::Major);
    }
}
