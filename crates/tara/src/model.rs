//! The TARA model as the repository keeps it: TOML files, one part of the analysis each,
//! following ISO/SAE 21434 clause 15 (item definition and assets, damage scenarios, threat
//! scenarios with their attack paths, treatment, controls, goals) plus the regulation
//! tables (UNECE R155 Annex 5 scope, R156 §7). Every file may hold any section; a model is
//! the union of the files of its folder, so a reviewer reads a threat in one diff hunk.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rating::{Factors, ImpactRatings, Raise, Vector};

/// Where a model could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not a valid model part.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        source: Box<toml::de::Error>,
    },
    /// A folder holds no model file.
    #[error("{0}: no .toml model files")]
    Empty(PathBuf),
}

/// The whole analysis.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// The item (clause 15.3 input: item definition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Item>,
    /// Assets with their cybersecurity properties (15.3).
    #[serde(default, rename = "asset")]
    pub assets: Vec<Asset>,
    /// Damage scenarios with impact ratings (15.3, 15.5).
    #[serde(default, rename = "damage")]
    pub damages: Vec<Damage>,
    /// Threat scenarios with attack paths and treatment (15.4, 15.6, 15.7, 15.9).
    #[serde(default, rename = "threat")]
    pub threats: Vec<Threat>,
    /// Controls: what Rampart does about a threat and the evidence that it works.
    #[serde(default, rename = "control")]
    pub controls: Vec<Control>,
    /// Cybersecurity goals (15.9 / 9.4).
    #[serde(default, rename = "goal")]
    pub goals: Vec<Goal>,
    /// UNECE R155 Annex 5 Part A entries outside the item, with the reason.
    #[serde(default, rename = "r155_out_of_scope")]
    pub r155_out_of_scope: Vec<OutOfScope>,
    /// UNECE R156 §7 requirements: the feature that meets each and its evidence.
    #[serde(default, rename = "r156")]
    pub r156: Vec<R156Requirement>,
}

/// The item definition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The item's name.
    pub name: String,
    /// What it is and does.
    pub description: String,
    /// Its parts inside the boundary.
    #[serde(default)]
    pub components: Vec<String>,
    /// What is outside the boundary (interfaces to it are in scope, it is not).
    #[serde(default)]
    pub outside: Vec<String>,
    /// Assumptions about the operational environment the analysis rests on.
    #[serde(default)]
    pub assumptions: Vec<String>,
}

/// A cybersecurity property (clause 15.3: confidentiality, integrity, availability; plus
/// authenticity and freshness, which TUF and Uptane protect separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Property {
    /// Confidentiality.
    Confidentiality,
    /// Integrity.
    Integrity,
    /// Availability.
    Availability,
    /// Authenticity (who made it).
    Authenticity,
    /// Freshness (it is the current one).
    Freshness,
}

impl Property {
    /// The property's name.
    pub fn label(self) -> &'static str {
        match self {
            Property::Confidentiality => "confidentiality",
            Property::Integrity => "integrity",
            Property::Availability => "availability",
            Property::Authenticity => "authenticity",
            Property::Freshness => "freshness",
        }
    }
}

/// An asset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    /// Identifier (`A-…`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Where it lives and what it is.
    pub description: String,
    /// The properties whose loss would cause damage.
    pub properties: Vec<Property>,
}

/// A damage scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Damage {
    /// Identifier (`DS-…`).
    pub id: String,
    /// What goes wrong for the road user or the OEM.
    pub title: String,
    /// Impact per category.
    pub impact: ImpactRatings,
    /// Why these ratings.
    pub rationale: String,
}

/// STRIDE category of a threat scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stride {
    /// Spoofing identity.
    Spoofing,
    /// Tampering with data.
    Tampering,
    /// Repudiation.
    Repudiation,
    /// Information disclosure.
    InformationDisclosure,
    /// Denial of service.
    DenialOfService,
    /// Elevation of privilege.
    ElevationOfPrivilege,
}

impl Stride {
    /// The category's name.
    pub fn label(self) -> &'static str {
        match self {
            Stride::Spoofing => "Spoofing",
            Stride::Tampering => "Tampering",
            Stride::Repudiation => "Repudiation",
            Stride::InformationDisclosure => "Information disclosure",
            Stride::DenialOfService => "Denial of service",
            Stride::ElevationOfPrivilege => "Elevation of privilege",
        }
    }
}

/// Risk treatment decision (clause 15.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Treatment {
    /// Remove the risk by not doing what causes it.
    Avoid,
    /// Lower it with controls (each with evidence).
    Reduce,
    /// Share it (contract, insurance, another party's controls).
    Share,
    /// Keep it, with a reason (a cybersecurity claim).
    Retain,
}

impl Treatment {
    /// The decision's name.
    pub fn label(self) -> &'static str {
        match self {
            Treatment::Avoid => "avoid",
            Treatment::Reduce => "reduce",
            Treatment::Share => "share",
            Treatment::Retain => "retain",
        }
    }
}

/// A threat scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threat {
    /// Identifier (`TS-…`).
    pub id: String,
    /// The threat, one line.
    pub title: String,
    /// The asset it targets.
    pub asset: String,
    /// The property it compromises.
    pub property: Property,
    /// STRIDE category.
    pub stride: Stride,
    /// The damage scenarios it leads to.
    pub damage: Vec<String>,
    /// UNECE R155 Annex 5 Part A entries it realises (e.g. "12.1").
    pub r155: Vec<String>,
    /// The seed article's name for this attack, when it names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    /// How close the attacker must be.
    pub vector: Vector,
    /// Attack paths (15.6), each rated (15.7).
    #[serde(rename = "path")]
    pub paths: Vec<AttackPath>,
    /// Treatment decision.
    pub treatment: Treatment,
    /// Controls (required for reduce).
    #[serde(default)]
    pub controls: Vec<String>,
    /// The goal the treatment serves (required for reduce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    /// Why (required for share, retain and avoid: it is the cybersecurity claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who carries a shared risk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_with: Option<String>,
}

/// An attack path: the steps and the attacker's effort before any control.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackPath {
    /// The path, one line.
    pub title: String,
    /// Its steps, in order (all needed).
    pub steps: Vec<String>,
    /// Attack-potential factors without Rampart's controls.
    #[serde(flatten)]
    pub factors: Factors,
}

/// A control and its evidence.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Identifier (`C-…`).
    pub id: String,
    /// The control, one line.
    pub title: String,
    /// What it does and where it lives in the code.
    pub description: String,
    /// What it forces on an attack path, once its evidence passed.
    pub raises: Raise,
    /// The evidence: `attack:SCENARIO` (the lab defeats it), `detect:SCENARIO` (the V-SOC
    /// raises the incident it should), `test:TARGET::PATH` (a test of `cargo test`).
    pub evidence: Vec<String>,
}

/// A cybersecurity goal; its CAL is computed from the threats that name it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    /// Identifier (`CG-…`).
    pub id: String,
    /// The goal.
    pub title: String,
}

/// R155 Annex 5 entries the item does not contain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutOfScope {
    /// Annex 5 Part A numbers.
    pub numbers: Vec<String>,
    /// Why they are not threats to this item.
    pub reason: String,
}

/// One requirement of UNECE R156 §7 and how Rampart meets it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct R156Requirement {
    /// Paragraph number (e.g. "7.2.2.1").
    pub paragraph: String,
    /// The requirement, paraphrased.
    pub requirement: String,
    /// The feature that meets it.
    pub feature: String,
    /// Evidence, as for controls (may be empty for a process requirement, with `note`).
    #[serde(default)]
    pub evidence: Vec<String>,
    /// What the OEM must add (process, documentation) beyond the product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Model {
    /// Reads a model from one TOML file, or from every `.toml` file of a folder (in name
    /// order) merged.
    pub fn load(path: &Path) -> Result<Model, LoadError> {
        let read_err = |source| LoadError::Read {
            path: path.to_owned(),
            source,
        };
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(read_err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(LoadError::Empty(path.to_owned()));
            }
            let mut parts = Vec::new();
            for f in files {
                let text = std::fs::read_to_string(&f).map_err(|source| LoadError::Read {
                    path: f.clone(),
                    source,
                })?;
                parts.push((f, text));
            }
            Model::from_parts(parts.iter().map(|(p, t)| (p.as_path(), t.as_str())))
        } else {
            let text = std::fs::read_to_string(path).map_err(read_err)?;
            Model::from_parts([(path, text.as_str())])
        }
    }

    /// Parses and merges model parts (name, TOML text).
    pub fn from_parts<'a>(
        parts: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<Model, LoadError> {
        let mut model = Model::default();
        for (path, text) in parts {
            let part: Model = toml::from_str(text).map_err(|e| LoadError::Parse {
                path: path.to_owned(),
                source: Box::new(e),
            })?;
            if part.item.is_some() {
                model.item = part.item;
            }
            model.assets.extend(part.assets);
            model.damages.extend(part.damages);
            model.threats.extend(part.threats);
            model.controls.extend(part.controls);
            model.goals.extend(part.goals);
            model.r155_out_of_scope.extend(part.r155_out_of_scope);
            model.r156.extend(part.r156);
        }
        Ok(model)
    }

    /// Rampart's own TARA, as committed under `tara/` and built into the binary.
    pub fn rampart() -> Result<Model, LoadError> {
        Model::from_parts(
            crate::EMBEDDED
                .iter()
                .map(|(name, text)| (Path::new(*name), *text)),
        )
    }

    /// The asset called `id`.
    pub fn asset(&self, id: &str) -> Option<&Asset> {
        self.assets.iter().find(|a| a.id == id)
    }

    /// The damage scenario called `id`.
    pub fn damage(&self, id: &str) -> Option<&Damage> {
        self.damages.iter().find(|d| d.id == id)
    }

    /// The control called `id`.
    pub fn control(&self, id: &str) -> Option<&Control> {
        self.controls.iter().find(|c| c.id == id)
    }
}
