//! The demo's offline install: a vehicle out of coverage gets the next body-controller
//! release from a workshop's bundle (a USB stick), verified exactly as online; the signed
//! reports it writes reach the director when the workshop uploads them.

use rampart_lab::image_bytes;
use rampart_vehicle::consent::human_bytes;
use serde_json::Value;

use super::{ok, Demo};

impl Demo {
    /// Step 9: an offline install on the first vehicle.
    pub(super) async fn offline_install(&mut self, root: &std::path::Path) -> anyhow::Result<()> {
        self.out
            .step("Offline install: a workshop's USB stick instead of the network");
        let Some(vin) = self.lab.vehicles.first().map(|v| v.vin.clone()) else {
            return Ok(());
        };
        let name = "bcm/fw-1.6.bin";
        let request = self
            .lab
            .image_request(name, "bcm-1", &image_bytes(name, 200_000))?;
        self.lab
            .publish(&rampart_server::ops::PublishRequest {
                version: Some("1.6".into()),
                purpose: Some("body controller: door lock fix".into()),
                ..request
            })
            .await?;
        self.lab
            .admin_post(
                "assignments",
                &serde_json::json!({"target": name, "vins": [vin], "hardware_id": "bcm-1"}),
            )
            .await?;
        let stick = root.join("usb-stick");
        std::fs::create_dir_all(&stick)?;
        let bundle = stick.join(format!("{vin}.bundle"));
        let made = self
            .lab
            .offline_bundle(std::slice::from_ref(&vin), &bundle)
            .await?;
        ok(format!(
            "workshop: `rampart offline-bundle create --vin {vin}` wrote {} ({}), usable until {}",
            bundle
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            human_bytes(made.bytes),
            made.description.expires
        ));
        let reports = stick.join(format!("{vin}.reports.jsonl"));
        let run = self
            .lab
            .run_vehicle_from_bundle(0, &bundle, &reports, None)
            .await?;
        let installed = run
            .report
            .as_ref()
            .and_then(|r| r.get("updates"))
            .and_then(Value::as_array)
            .is_some_and(|u| {
                !u.is_empty()
                    && u.iter()
                        .all(|x| x.get("status") == Some(&Value::from("Installed")))
            });
        self.expect(
            run.success && installed,
            format!("{vin}: `rampart vehicle --from-bundle` verified both repositories from the stick and installed {name}; no network used"),
            format!("{vin}: the offline install failed"),
            format!("offline install on {vin}:\n{}\n{}", run.stdout, run.stderr),
        );
        let before = self.lab.installed(&vin).await?;
        let answers = self.lab.import_reports(&reports).await?;
        let accepted = answers.iter().filter(|a| a.is_ok()).count();
        let after = self.lab.installed(&vin).await?;
        self.expect(
            after.values().any(|t| t == name) && !before.values().any(|t| t == name),
            format!(
                "workshop: `rampart admin import-reports` — {accepted} signed report(s) accepted; the director now sees {name} on {vin}"
            ),
            format!("the director does not see {name} after the import"),
            format!("import of {}: {answers:?}; director sees {after:?}", reports.display()),
        );
        Ok(())
    }
}
