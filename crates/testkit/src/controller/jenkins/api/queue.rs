//! The queue routes: labels, the queue and its items, cancelling.

use super::*;

impl Api<'_> {
    /// `Jenkins.getLabel`: any expression (or, failing to parse, one atom).
    pub(super) fn label(&self, expression: &str) -> Response<Body> {
        let Some(label) = super::super::labels::Label::for_job(expression) else {
            return not_found();
        };
        let value = {
            let state = self.shared.state();
            let model = &state.jenkins;
            let online = |name: &str| state.channels.contains_key(name);
            let nodes = model.label_nodes(&label);
            let (mut total, mut busy) = (0, 0);
            for name in &nodes {
                if let Some(node) = model.nodes.get(*name) {
                    if online(name) {
                        total += node.executors.len();
                        busy += node.executors.iter().filter(|e| e.is_some()).count();
                    }
                }
            }
            let class = match &label {
                super::super::labels::Label::Atom(_) => "hudson.model.labels.LabelAtom",
                super::super::labels::Label::Not(_) => "hudson.model.labels.LabelExpression$Not",
                super::super::labels::Label::Paren(_) => {
                    "hudson.model.labels.LabelExpression$Paren"
                }
                super::super::labels::Label::And(..) => "hudson.model.labels.LabelExpression$And",
                super::super::labels::Label::Or(..) => "hudson.model.labels.LabelExpression$Or",
                super::super::labels::Label::Implies(..) => {
                    "hudson.model.labels.LabelExpression$Implies"
                }
                super::super::labels::Label::Iff(..) => "hudson.model.labels.LabelExpression$Iff",
            };
            json!({
                "_class": class,
                "actions": [],
                "busyExecutors": busy,
                "clouds": [],
                "description": "",
                "idleExecutors": model.idle_executors(Some(&label), &online),
                "name": label.name(),
                "nodes": nodes.iter().map(|n| if *n == super::super::BUILT_IN {
                    json!({"_class": "hudson.model.Hudson", "nodeName": ""})
                } else {
                    json!({"_class": "hudson.slaves.DumbSlave", "nodeName": n})
                }).collect::<Vec<_>>(),
                "offline": model.label_offline(&label, &online),
                "tiedJobs": [],
                "totalExecutors": total,
            })
        };
        self.json(value, |_| {})
    }

    pub(super) fn item_json(
        &self,
        model: &Model,
        item: &Item,
        online: &dyn Fn(&str) -> bool,
        now: u64,
    ) -> Value {
        let url = &self.shared.url;
        let task = match item.job.kind {
            JobKind::Freestyle => json!({
                "_class": "hudson.model.FreeStyleProject",
                "color": "notbuilt",
                "labelExpression": item.job.label,
                "name": item.job.name,
                "url": format!("{url}job/{}/", url_encode(&item.job.name)),
            }),
            JobKind::Pipeline => json!({
                "_class": "org.jenkinsci.plugins.workflow.support.steps.ExecutorStepExecution$PlaceholderTask",
                "fullDisplayName": format!("{} #{}", item.job.name, item.id),
                "name": format!("part of {} #{}", item.job.name, item.id),
                "url": format!("{url}job/{}/{}/", url_encode(&item.job.name), item.id),
            }),
        };
        json!({
            "_class": "hudson.model.Queue$BuildableItem",
            "actions": [],
            "blocked": false,
            "buildable": true,
            "id": item.id,
            "inQueueSince": item.in_queue_since_ms,
            "params": "",
            "stuck": model.stuck(item, online, now),
            "task": task,
            "url": format!("queue/item/{}/", item.id),
            "why": model.why(item, online, self.lang),
            "buildableStartMilliseconds": item.buildable_start_ms,
            "pending": false,
        })
    }

    pub(super) fn queue(&self) -> Response<Body> {
        let now = super::super::now_ms();
        let readable = self.job_read;
        let state = self.shared.state();
        let online = |name: &str| state.channels.contains_key(name);
        // Buildable items come newest first (Jenkins lists them reversed);
        // items the caller may not read are left out.
        let items: Vec<Value> = if readable {
            state
                .jenkins
                .queue
                .iter()
                .rev()
                .map(|item| self.item_json(&state.jenkins, item, &online, now))
                .collect()
        } else {
            Vec::new()
        };
        drop(state);
        let value = json!({
            "_class": "hudson.model.Queue",
            "discoverableItems": [],
            "items": items,
        });
        self.json(value, |value| {
            if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
                items.iter_mut().for_each(prune_task);
            }
        })
    }

    pub(super) fn queue_item(&self, id: Option<u64>) -> Response<Body> {
        let now = super::super::now_ms();
        let value = {
            let state = self.shared.state();
            let online = |name: &str| state.channels.contains_key(name);
            let Some(item) = id.and_then(|id| state.jenkins.queue.iter().find(|i| i.id == id))
            else {
                return not_found();
            };
            if !state
                .jenkins
                .security
                .has(&self.caller, Permission::JobRead)
            {
                drop(state);
                return self.require(Permission::JobRead).unwrap_or_else(not_found);
            }
            self.item_json(&state.jenkins, item, &online, now)
        };
        self.json(value, prune_task)
    }

    pub(super) fn cancel(&self, id: Option<&str>) -> Response<Body> {
        let Some(id) = id.and_then(|id| id.trim().parse::<u64>().ok()) else {
            return html_error(StatusCode::BAD_REQUEST, "Query parameter 'id' is required");
        };
        let (queued, readable) = {
            let state = self.shared.state();
            (
                state.jenkins.queue.iter().any(|i| i.id == id),
                state
                    .jenkins
                    .security
                    .has(&self.caller, Permission::JobRead),
            )
        };
        if !queued || !readable {
            return html_error(
                StatusCode::NOT_FOUND,
                &format!("Provided id ({id}) not found"),
            );
        }
        if !self.has(Permission::JobCancel) {
            return html_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("Item for id ({id}) is not cancellable"),
            );
        }
        let handle = super::super::super::JenkinsHandle {
            shared: self.shared.clone(),
        };
        if handle.cancel(id) {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        } else {
            html_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Could not cancel run for id {id}"),
            )
        }
    }
}
