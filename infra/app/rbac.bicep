// Role assignments: each at the narrowest scope that works, named
// guid(scope id, principal id, role definition GUID) so re-provisioning is idempotent.
//
// The Function App's system-assigned identity (appPrincipalId):
//
// | Role                                 | Scope                 | Why                                        |
// |--------------------------------------|-----------------------|--------------------------------------------|
// | Cognitive Services OpenAI User       | OpenAI account        | chat completions with a bearer token       |
// | Storage Blob Data Owner              | storage account       | host storage (AzureWebJobsStorage), Flex   |
// |                                      |                       | package container, results/{id}.json and   |
// |                                      |                       | inputs/{id}.json blobs (bindings, and the  |
// |                                      |                       | handler's own read of results/{id}.json    |
// |                                      |                       | in POST /api/jobs' id check) and the       |
// |                                      |                       | worker's create-only claims/{id} blobs     |
// | Storage Queue Data Contributor       | queue `jobs`          | queue trigger: peek, dequeue, delete and   |
// |                                      |                       | Update Message (release, renew); submit_jobs|
// |                                      |                       | and put_job output bindings                |
// | Storage Queue Data Contributor       | queue `jobs-poison`   | host moves messages after maxDequeueCount  |
// | Storage Queue Data Message Sender    | queue `results`       | process_job output binding                 |
// | Monitoring Metrics Publisher         | Application Insights  | Entra ID telemetry ingestion               |
//
// Why Contributor on the queues the app reads, not Reader + Message Processor: neither of those
// grants `queues/messages/write`, which Update Message needs, and the Queues extension calls
// Update Message to hand a failed message back for redelivery (visibility timeout 0) and to
// keep a long invocation's message invisible. Without it every transient failure gets a 403,
// the message reappears only when its ~10-minute lease ends (five deliveries take 40+ minutes)
// and an invocation longer than the lease can run twice (MicrosoftDocs/azure-docs issue
// 120932; Microsoft's Flex Consumption samples grant Storage Queue Data Contributor). It is
// scoped to the two queues, so the app cannot read or write any other queue. On `jobs-poison`
// Contributor also covers creating the queue should it be deleted (the host creates it on
// first use when it is missing).
//
// Blob: Storage Blob Data Owner on the account is what the Functions host requires for
// identity-based AzureWebJobsStorage (the azure-webjobs-hosts / -secrets containers, leases).
// It already covers the deployment container and the `results`, `inputs` and `claims`
// containers, so a narrower container-scoped Blob Data Contributor on any of them would add nothing.
//
// The deploying principal (userPrincipalId, optional):
//
// | Role                           | Scope                          | Why                                      |
// |--------------------------------|--------------------------------|------------------------------------------|
// | Cognitive Services OpenAI User | OpenAI account                 | run the handler / `handler doctor` locally |
// | Storage Blob Data Contributor  | container `results`            | read results (`az storage blob ... --auth-mode login`); only with grantUserStorageAccess |
// | Storage Queue Data Contributor | queues `jobs`, `jobs-poison`, `results` | peek/send/requeue jobs, read results; only with grantUserStorageAccess |
//
// The deploying principal never gets the whole account: not the deployed code's container
// (app-package), not the host's containers.
//
// (Azure RBAC changes take 5-30 minutes to apply; see docs/deploy.md.)

param storageAccountName string
param jobsQueueName string
param jobsPoisonQueueName string
param resultsQueueName string
param resultsContainerName string
param openAiAccountName string
param appInsightsName string

@description('Principal id of the Function App\'s system-assigned identity.')
param appPrincipalId string

@description('Object id of the deploying principal; empty = no roles for it.')
param userPrincipalId string = ''
param userPrincipalType string = 'User'
param grantUserStorageAccess bool = false

// Built-in role definition GUIDs (the table in shared/spec/infra.md; checked by
// tests/infra_consistency.rs). Every role assignment refers to this map, never to a literal.
var roles = {
  'Cognitive Services OpenAI User': '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd'
  'Storage Blob Data Owner': 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  'Storage Blob Data Contributor': 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  'Storage Queue Data Contributor': '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  'Storage Queue Data Reader': '19e7f393-937e-4f77-808e-94535e297925'
  'Storage Queue Data Message Processor': '8a0f0c08-91a1-4084-bc3d-661d67233fed'
  'Storage Queue Data Message Sender': 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
  'Monitoring Metrics Publisher': '3913510d-42f4-4e42-8a64-420c390055eb'
}

var withUser = !empty(userPrincipalId)
var withUserStorage = withUser && grantUserStorageAccess

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName

  resource blobService 'blobServices' existing = {
    name: 'default'

    resource resultsContainer 'containers' existing = {
      name: resultsContainerName
    }
  }

  resource queueService 'queueServices' existing = {
    name: 'default'

    resource jobsQueue 'queues' existing = {
      name: jobsQueueName
    }

    resource jobsPoisonQueue 'queues' existing = {
      name: jobsPoisonQueueName
    }

    resource resultsQueue 'queues' existing = {
      name: resultsQueueName
    }
  }
}

resource openAiAccount 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: openAiAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// ---- The Function App's identity ----

resource appOpenAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(openAiAccount.id, appPrincipalId, roles['Cognitive Services OpenAI User'])
  scope: openAiAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Cognitive Services OpenAI User'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: Azure OpenAI chat completions (Entra ID token)'
  }
}

resource appBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, appPrincipalId, roles['Storage Blob Data Owner'])
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Blob Data Owner'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: host storage, deployment package, results, inputs and claims blobs'
  }
}

resource appJobsContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount::queueService::jobsQueue.id, appPrincipalId, roles['Storage Queue Data Contributor'])
  scope: storageAccount::queueService::jobsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Contributor'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: queue trigger on jobs (peek, dequeue, delete, Update Message to release and renew), submit_jobs and put_job outputs'
  }
}

resource appPoisonContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount::queueService::jobsPoisonQueue.id, appPrincipalId, roles['Storage Queue Data Contributor'])
  scope: storageAccount::queueService::jobsPoisonQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Contributor'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: host moves failed jobs to jobs-poison (and creates it if missing)'
  }
}

resource appResultsSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount::queueService::resultsQueue.id, appPrincipalId, roles['Storage Queue Data Message Sender'])
  scope: storageAccount::queueService::resultsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Message Sender'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: process_job output to results'
  }
}

resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, appPrincipalId, roles['Monitoring Metrics Publisher'])
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Monitoring Metrics Publisher'])
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Function App: Application Insights ingestion with Entra ID'
  }
}

// ---- The deploying principal (optional) ----

resource userOpenAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withUser) {
  name: guid(openAiAccount.id, userPrincipalId, roles['Cognitive Services OpenAI User'])
  scope: openAiAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Cognitive Services OpenAI User'])
    principalId: userPrincipalId
    principalType: userPrincipalType
    description: 'Developer: run the handler and handler doctor locally'
  }
}

resource userResultsBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withUserStorage) {
  name: guid(storageAccount::blobService::resultsContainer.id, userPrincipalId, roles['Storage Blob Data Contributor'])
  scope: storageAccount::blobService::resultsContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Blob Data Contributor'])
    principalId: userPrincipalId
    principalType: userPrincipalType
    description: 'Developer: read results blobs'
  }
}

resource userJobsQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withUserStorage) {
  name: guid(storageAccount::queueService::jobsQueue.id, userPrincipalId, roles['Storage Queue Data Contributor'])
  scope: storageAccount::queueService::jobsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Contributor'])
    principalId: userPrincipalId
    principalType: userPrincipalType
    description: 'Developer: peek and send job messages'
  }
}

resource userPoisonQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withUserStorage) {
  name: guid(storageAccount::queueService::jobsPoisonQueue.id, userPrincipalId, roles['Storage Queue Data Contributor'])
  scope: storageAccount::queueService::jobsPoisonQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Contributor'])
    principalId: userPrincipalId
    principalType: userPrincipalType
    description: 'Developer: inspect and requeue poisoned jobs'
  }
}

resource userResultsQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (withUserStorage) {
  name: guid(storageAccount::queueService::resultsQueue.id, userPrincipalId, roles['Storage Queue Data Contributor'])
  scope: storageAccount::queueService::resultsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Contributor'])
    principalId: userPrincipalId
    principalType: userPrincipalType
    description: 'Developer: read result messages'
  }
}
